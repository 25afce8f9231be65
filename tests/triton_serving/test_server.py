"""A real tritonserver on loopback serving the tiny model's CPU repository: parity with `llama-export generate`,
200 streamed requests with 16 in flight through the in-flight batching front end (each equal to its batch-1
generation, malformed ones among them refused alone), the unary sibling under load, malformed requests,
cancellation, custom metrics. Run alone with `pytest -m triton`."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from triton_server import TritonServer, ensure_venv, libpython_dir, load_client_example
from tritonclient.utils import InferenceServerException

from llama_export.exporter.artifacts import load_manifest
from llama_export.triton import protocol
from llama_export.triton.repository import write_repository
from llama_export.validate.generation import generate_tokens
from llama_export.validate.runners import OrtRunner

pytestmark = pytest.mark.triton
PROMPT, NEW_TOKENS = "The for statement", 16
REQUESTS, IN_FLIGHT, REQUEST_TIMEOUT = 200, 16, 60.0


client_example = load_client_example()


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
    tokenizer = built.tokenizer()
    expected_ids = list(generate_tokens(OrtRunner(built.model_path, built.args), tokenizer.encode(PROMPT), NEW_TOKENS,
                                        stop_ids=tokenizer.stop_ids, max_length=built.args.max_seq_len))
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


@pytest.fixture(scope="module")
def references(tiny_dir):
    """Batch-1 greedy tokens (generate_tokens over KVSession) of each test prompt, 16 new tokens: with fewer
    max_new_tokens a greedy run is the prefix."""
    built = load_manifest(tiny_dir)
    tokenizer = built.tokenizer()
    runner = OrtRunner(built.model_path, built.args)
    return {f"{PROMPT} {i}": list(generate_tokens(runner, tokenizer.encode(f"{PROMPT} {i}"), NEW_TOKENS,
                                                  stop_ids=tokenizer.stop_ids,
                                                  max_length=built.args.max_seq_len)) for i in range(8)}


MALFORMED = [({"prompt": "word " * 2000}, "this model takes at most"), ({"prompt": PROMPT, "top_p": 0.0}, "top_p")]


def test_200_streamed_requests_with_16_in_flight_equal_batch_1(server, references):
    rng = random.Random(0)
    jobs = [{"prompt": rng.choice(list(references)), "max_new_tokens": rng.randint(1, NEW_TOKENS)}
            for _ in range(REQUESTS)]
    malformed = {}
    for n, i in enumerate(range(7, REQUESTS, 40)):  # malformed requests land in the middle of running batches
        jobs[i], malformed[i] = MALFORMED[n % 2][0], MALFORMED[n % 2][1]

    def one(i):
        start = time.perf_counter()
        try:
            ids = [t for _, ids in client_example.stream(server.grpc_url, "tiny", timeout=REQUEST_TIMEOUT,
                                                         **jobs[i]) for t in ids]
        except InferenceServerException as exc:
            return exc, time.perf_counter() - start
        return ids, time.perf_counter() - start

    started = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    wall = time.perf_counter() - started
    wrong = []
    for i, (got, _) in enumerate(results):
        if i in malformed:
            assert isinstance(got, InferenceServerException) and malformed[i] in str(got), got
        elif got != references[jobs[i]["prompt"]][:jobs[i]["max_new_tokens"]]:
            wrong.append((jobs[i], got))
    latencies = np.array([seconds for got, seconds in results if isinstance(got, list)]) * 1000
    print(f"\n{REQUESTS} streamed requests, {IN_FLIGHT} in flight, 1-{NEW_TOKENS} new tokens: "
          f"p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms, "
          f"{wall:.1f} s, {len(malformed)} malformed refused")
    assert not wrong, wrong[:3]
    assert _live(server)


def test_unary_sibling_under_load(server, references):
    prompts = list(references)

    def one(i: int) -> list[int]:
        return client_example.complete(server.http_url, "tiny", prompts[i % 8], max_new_tokens=8,
                                       timeout=REQUEST_TIMEOUT)[1]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    assert all(ids == references[prompts[i % 8]][:8] for i, ids in enumerate(results))


def _metric(text: str, name: str) -> float:
    """Sum of a metric's samples for the streaming model."""
    pattern = rf"^{name}{{[^}}]*model=\"tiny_generate\"[^}}]*}} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE))


def _wait_idle(server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _metric(server.metrics(), protocol.METRIC_BATCH) > 0:
        assert time.monotonic() < deadline, "the batch never emptied"
        time.sleep(0.1)


def test_metrics_on_the_metrics_endpoint(server):
    before = _metric(server.metrics(), protocol.METRIC_TOKENS)
    ids = [t for _, ids in client_example.stream(server.grpc_url, "tiny", PROMPT, max_new_tokens=5) for t in ids]
    text = server.metrics()
    for name in (protocol.METRIC_QUEUE, protocol.METRIC_BATCH, protocol.METRIC_TOKENS):
        assert re.search(rf"^{name}{{", text, flags=re.MULTILINE), f"{name} missing from the metrics endpoint"
    assert _metric(text, protocol.METRIC_TOKENS) - before == len(ids) > 0
    assert _metric(text, f"{protocol.METRIC_TTFT}_count") >= 1
    assert _metric(text, protocol.METRIC_BATCH) == 0 and _metric(text, protocol.METRIC_QUEUE) == 0


def test_cancelled_stream_leaves_the_batch(server):
    """A client that cancels its gRPC stream is dropped at the next step: the token counter stops short."""
    _wait_idle(server)
    before = _metric(server.metrics(), protocol.METRIC_TOKENS)
    received = threading.Event()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: received.set())
    client.async_stream_infer("tiny_generate", client_example._inputs(grpcclient, PROMPT, 400, 0.0, 1.0, 0, [], True))
    assert received.wait(REQUEST_TIMEOUT), "no first token"
    client.stop_stream(cancel_requests=True)
    client.close()
    _wait_idle(server)
    generated = _metric(server.metrics(), protocol.METRIC_TOKENS) - before
    print(f"\ncancelled after {generated:.0f} of 400 tokens")
    assert 0 < generated < 400, f"{generated} tokens generated:\n{server.log_tail()}"
    assert client_example.complete(server.http_url, "tiny", PROMPT, max_new_tokens=2)[1]


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
    ("chat without a template", [(protocol.TEXT_INPUT, np.array([b"x"], dtype=np.object_), "BYTES"),
                                 (protocol.CHAT, np.array([True], dtype=bool), "BOOL")], "no chat template"),
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
