"""A real tritonserver on loopback serving the tiny model's CPU repository: parity with `llama-export generate`,
200 requests with 8 in flight, malformed requests, streaming. Run alone with `pytest -m triton`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from triton_server import TritonServer, ensure_venv, libpython_dir
from tritonclient.utils import InferenceServerException

from llama_export.exporter.artifacts import load_manifest
from llama_export.exporter.tokenizer import Tokenizer
from llama_export.triton import protocol
from llama_export.triton.repository import write_repository
from llama_export.validate.generation import generate_tokens
from llama_export.validate.runners import OrtRunner

pytestmark = pytest.mark.triton
PROMPT, NEW_TOKENS = "The for statement", 16
REQUESTS, IN_FLIGHT, REQUEST_TIMEOUT = 200, 8, 60.0


def _load_example():
    path = Path(__file__).resolve().parents[2] / "examples" / "triton_client.py"
    spec = importlib.util.spec_from_file_location("triton_client_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client_example = _load_example()


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    if libpython_dir() is None:
        pytest.skip("this Python has no shared libpython: the python backend stub cannot embed it")
    started = time.perf_counter()
    venv = ensure_venv()
    venv_seconds = time.perf_counter() - started
    workdir = tmp_path_factory.mktemp("tritonserver")
    repo = write_repository(tiny_dir, workdir / "repo")
    instance = TritonServer(venv, repo.path, [repo.models["generate"], repo.models["complete"]], workdir)
    try:
        instance.start(timeout=120)
        print(f"\ntriton venv ready in {venv_seconds:.1f} s; server ready in "
              f"{time.perf_counter() - started - venv_seconds:.1f} s")
        yield instance
    finally:
        instance.stop()


def _live(server) -> bool:
    with httpclient.InferenceServerClient(server.http_url, network_timeout=10) as client:
        return client.is_server_live() and client.is_server_ready()


def test_greedy_tokens_equal_llama_export_generate(server, tiny_dir):
    cli = subprocess.run([sys.executable, "-m", "llama_export.cli", "generate", str(tiny_dir), "--backend", "ort",
                          "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)],
                         capture_output=True, text=True, timeout=180, check=True)
    built = load_manifest(tiny_dir)
    tokenizer = Tokenizer(built.tokenizer_path)
    expected_ids = list(generate_tokens(OrtRunner(built.model_path, built.args), tokenizer.encode(PROMPT), NEW_TOKENS,
                                        stop_ids=frozenset({tokenizer.eos_id}), max_length=built.args.max_seq_len))
    text, ids = client_example.complete(server.http_url, "tiny", PROMPT, max_new_tokens=NEW_TOKENS)
    assert ids == expected_ids
    assert cli.stdout == PROMPT + text + "\n"
    pieces = list(client_example.stream(server.grpc_url, "tiny", PROMPT, max_new_tokens=NEW_TOKENS))
    assert len(pieces) >= min(2, len(expected_ids)), "tokens must arrive one response at a time"
    assert [t for _, ids in pieces for t in ids] == expected_ids
    assert "".join(piece for piece, _ in pieces) == text


def test_sampling_is_seeded_and_stop_strings_cut(server):
    settings = {"max_new_tokens": 12, "temperature": 0.9, "top_p": 0.9, "seed": 7}
    first = client_example.complete(server.http_url, "tiny", PROMPT, **settings)
    assert first == client_example.complete(server.http_url, "tiny", PROMPT, **settings)
    greedy, _ = client_example.complete(server.http_url, "tiny", PROMPT, max_new_tokens=NEW_TOKENS)
    stop = greedy.strip().split(" ")[-1] if greedy.strip() else "x"
    cut, _ = client_example.complete(server.http_url, "tiny", PROMPT, max_new_tokens=NEW_TOKENS, stop=[stop])
    assert stop not in cut and greedy.startswith(cut)
    streamed = "".join(p for p, _ in client_example.stream(server.grpc_url, "tiny", PROMPT,
                                                           max_new_tokens=NEW_TOKENS, stop=[stop]))
    assert streamed == cut


def test_200_requests_with_8_in_flight(server):
    def one(i: int) -> float:
        start = time.perf_counter()
        client_example.complete(server.http_url, "tiny", f"{PROMPT} {i}", max_new_tokens=8, timeout=REQUEST_TIMEOUT)
        return time.perf_counter() - start

    started = time.perf_counter()
    errors, latencies = [], []
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = [pool.submit(one, i) for i in range(REQUESTS)]
        for future in futures:
            try:
                latencies.append(future.result(timeout=REQUEST_TIMEOUT * 2))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                errors.append(repr(exc))
    wall = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (float("nan"),) * 2
    print(f"\n{REQUESTS} requests, {IN_FLIGHT} in flight, 8 new tokens each: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"{REQUESTS / wall:.1f} req/s, {len(errors)} errors")
    assert not errors, errors[:3]
    assert len(latencies) == REQUESTS


def _http_infer(server, inputs: list[tuple[str, np.ndarray, str]]):
    tensors = []
    for name, array, dtype in inputs:
        tensor = httpclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with httpclient.InferenceServerClient(server.http_url, network_timeout=REQUEST_TIMEOUT) as client:
        return client.infer("tiny_complete", tensors)


@pytest.mark.parametrize("case, inputs, message", [
    ("wrong dtype", [(protocol.TEXT_INPUT, np.array([3], dtype=np.int32), "INT32")], "data-type"),
    ("missing input", [(protocol.MAX_NEW_TOKENS, np.array([4], dtype=np.int32), "INT32")], protocol.TEXT_INPUT),
    ("over-long prompt", [(protocol.TEXT_INPUT, np.array([b"word " * 2000], dtype=np.object_), "BYTES")],
     "this model takes at most"),
    ("bad top_p", [(protocol.TEXT_INPUT, np.array([b"x"], dtype=np.object_), "BYTES"),
                   (protocol.TOP_P, np.array([0.0], dtype=np.float32), "FP32")], "top_p"),
])
def test_malformed_requests_get_errors_and_the_server_stays_live(server, case, inputs, message):
    with pytest.raises(InferenceServerException, match=message):
        _http_infer(server, inputs)
    assert _live(server), f"server not live after {case}:\n{server.log_tail()}"
    assert client_example.complete(server.http_url, "tiny", PROMPT, max_new_tokens=2)[1], "a good request must work"


def test_streamed_error_ends_the_stream(server):
    with pytest.raises(InferenceServerException, match="this model takes at most"):
        list(client_example.stream(server.grpc_url, "tiny", "word " * 2000, max_new_tokens=4))
    assert _live(server)


def test_grpc_health(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_live() and client.is_model_ready("tiny_generate")
        assert client.get_model_config("tiny_generate").config.model_transaction_policy.decoupled
