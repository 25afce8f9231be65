"""A real tritonserver on a Llama 3.1-style export (tokenizer.json only, generation_config.json eos list, chat
template): greedy ids stop at a listed stop id, and `chat` requests go through the template as transformers
tokenizes it. Run alone with `pytest -m triton`."""

from __future__ import annotations

import json
import time

import pytest
from safetensors.torch import save_file
from tokenizer_folders import hf_llama3_tokenizer
from triton_server import TritonServer, ensure_venv, libpython_dir, load_client_example

from llama_export.config import ModelArgs
from llama_export.exporter.artifacts import load_manifest
from llama_export.exporter.checkpoints import load_model, open_checkpoint
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.hf_format import hf_config, to_hf_state_dict
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.tokenization import load_tokenizer
from llama_export.triton.repository import write_repository
from llama_export.validate.generation import generate_tokens
from llama_export.validate.runners import OrtRunner, TorchRunner

pytestmark = pytest.mark.triton
PROMPT, NEW_TOKENS = "def f(x):", 12


client = load_client_example()


@pytest.fixture(scope="module")
def llama3_export(tmp_path_factory):
    """Random weights with the tokenizer's vocabulary; generation_config.json lists Llama 3.1's three stop ids plus
    one the greedy continuation of PROMPT reaches (so stopping is observable on random weights)."""
    root = tmp_path_factory.mktemp("llama3-triton")
    ckpt = hf_llama3_tokenizer(root / "ckpt")
    tok = load_tokenizer(ckpt)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, multiple_of=32,
                     max_seq_len=256)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", **hf_config(args)}))
    state = to_hf_state_dict(RandomCheckpoint(args, seed=5).state_dict())
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(ckpt / "model.safetensors"))
    free = list(generate_tokens(TorchRunner(load_model(open_checkpoint(ckpt))), tok.prompt_ids(PROMPT), NEW_TOKENS))
    k = next(i for i in range(3, NEW_TOKENS) if free[i] not in free[:i])
    config = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [*config["eos_token_id"],
                                                                                         free[k]]}))
    return export_to_folder(open_checkpoint(ckpt), root / "export", quiet=True), free[:k]


@pytest.fixture(scope="module")
def server(llama3_export, tmp_path_factory):
    if libpython_dir() is None:
        pytest.skip("this Python has no shared libpython: the python backend stub cannot embed it")
    venv = ensure_venv()
    workdir = tmp_path_factory.mktemp("tritonserver-llama3")
    repo = write_repository(llama3_export[0], workdir / "repo", name="llama3")
    instance = TritonServer(venv, repo.path, [repo.models["generate"], repo.models["complete"]], workdir)
    try:
        started = time.perf_counter()
        instance.start(timeout=120)
        print(f"\nserver ready in {time.perf_counter() - started:.1f} s")
        yield instance
    finally:
        instance.stop()


def _expected(folder, chat: bool) -> list[int]:
    built = load_manifest(folder)
    tok = built.tokenizer()
    return list(generate_tokens(OrtRunner(built.model_path, built.args), tok.prompt_ids(PROMPT, chat), NEW_TOKENS,
                                stop_ids=tok.stop_ids, max_length=built.args.max_seq_len))


def test_greedy_ids_stop_at_a_generation_config_stop_id(server, llama3_export):
    folder, until_stop = llama3_export
    text, ids = client.complete(server.http_url, "llama3", PROMPT, max_new_tokens=NEW_TOKENS)
    assert ids == until_stop == _expected(folder, chat=False)
    assert text == load_manifest(folder).tokenizer().decode(ids)


def test_chat_requests_use_the_chat_template(server, llama3_export):
    from transformers import AutoTokenizer

    folder, _ = llama3_export
    tok = load_manifest(folder).tokenizer()
    assert tok.prompt_ids(PROMPT, chat=True) == AutoTokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = _expected(folder, chat=True)
    assert expected != _expected(folder, chat=False)
    _, ids = client.complete(server.http_url, "llama3", PROMPT, max_new_tokens=NEW_TOKENS, chat=True)
    assert ids == expected
    pieces = list(client.stream(server.grpc_url, "llama3", PROMPT, max_new_tokens=NEW_TOKENS, chat=True))
    assert [t for _, piece_ids in pieces for t in piece_ids] == expected
