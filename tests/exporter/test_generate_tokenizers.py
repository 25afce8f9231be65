"""`generate` on a Llama 3.1-style HF folder (tokenizer.json only, eos list): stop ids from generation_config.json,
`--chat` through the chat template, the same with the exported folder in ONNX Runtime."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file
from tokenizer_folders import hf_llama3_tokenizer

from llama_export.cli import main
from llama_export.config import ModelArgs
from llama_export.exporter.checkpoints import load_model, open_checkpoint
from llama_export.exporter.hf_format import hf_config, to_hf_state_dict
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.tokenization import load_tokenizer
from llama_export.validate.generation import generate_tokens
from llama_export.validate.runners import TorchRunner

PROMPT = "def f(x):"
NEW = 8


@pytest.fixture(scope="module")
def llama3_folder(tmp_path_factory):
    """Random weights whose vocabulary is the tokenizer's (every generated id decodes), no stop ids but EOS yet."""
    folder = hf_llama3_tokenizer(tmp_path_factory.mktemp("llama3") / "ckpt", eos_token_id=[])
    tok = load_tokenizer(folder)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, multiple_of=32)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **hf_config(args)}))
    state = to_hf_state_dict(RandomCheckpoint(args, seed=3).state_dict())
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(folder / "model.safetensors"))
    return folder


def _greedy(folder, ids, stop_ids=frozenset()):
    return list(generate_tokens(TorchRunner(load_model(open_checkpoint(folder))), ids, NEW, stop_ids=stop_ids))


def _continuation(tok, ids, produced):
    return tok.decode(ids + produced)[len(tok.decode(ids)):]


def test_generate_stops_at_a_generation_config_stop_id_torch_and_ort(llama3_folder, tmp_path):
    tok = load_tokenizer(llama3_folder)
    ids = tok.prompt_ids(PROMPT)
    free = _greedy(llama3_folder, ids)
    assert len(free) == NEW and tok.eos_id not in free
    k = next(i for i in range(2, NEW) if free[i] not in free[:i])  # the first id that has not appeared before
    unused = next(i for i in range(tok.vocab_size) if i not in free)
    config = llama3_folder / "generation_config.json"
    config.write_text(json.dumps({"eos_token_id": [unused, free[k]]}))
    assert load_tokenizer(llama3_folder).stop_ids == {tok.eos_id, unused, free[k]}

    runner = CliRunner()
    argv = ["--prompt", PROMPT, "--max-new-tokens", str(NEW)]
    torch_run = runner.invoke(main, ["generate", "--checkpoint", str(llama3_folder), *argv])
    assert torch_run.exit_code == 0, torch_run.output
    assert torch_run.output == PROMPT + _continuation(tok, ids, free[:k]) + "\n"

    out = tmp_path / "export"
    exported = runner.invoke(main, ["export", "--checkpoint", str(llama3_folder), "--out", str(out), "--quiet"])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"] == {"kind": "hf", "files": ["tokenizer.json", "tokenizer_config.json",
                                                             "generation_config.json"]}
    assert (out / "generation_config.json").read_text() == config.read_text()
    ort_run = runner.invoke(main, ["generate", str(out), "--backend", "ort", *argv])
    assert ort_run.exit_code == 0, ort_run.output
    assert ort_run.output == torch_run.output


def test_generate_chat_uses_the_template_as_transformers_tokenizes_it(llama3_folder, tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer(llama3_folder)
    messages = [{"role": "user", "content": PROMPT}]
    ids = AutoTokenizer.from_pretrained(llama3_folder).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert tok.prompt_ids(PROMPT, chat=True) == ids
    produced = _greedy(llama3_folder, ids, tok.stop_ids)
    result = CliRunner().invoke(main, ["generate", "--checkpoint", str(llama3_folder), "--chat", "--prompt", PROMPT,
                                       "--max-new-tokens", str(NEW)])
    assert result.exit_code == 0, result.output
    assert result.output == _continuation(tok, ids, produced) + "\n"


def test_generate_chat_without_a_template_is_exit_2():
    result = CliRunner().invoke(main, ["generate", "--chat", "--prompt", "hi", "--max-new-tokens", "1"])
    assert result.exit_code == 2 and "no chat template" in result.output


def test_validation_free_running_stops_at_the_folders_stop_ids(llama3_folder, tmp_path):
    from llama_export.exporter import artifacts
    from llama_export.exporter.export import export_to_folder
    from llama_export.validate.pipeline import choose_prompt, validate_build

    out = export_to_folder(open_checkpoint(llama3_folder), tmp_path / "export", quiet=True)
    built = artifacts.load_manifest(out)
    tok = built.tokenizer()
    prompt, _ = choose_prompt(built, 8, tok=tok)  # the prompt validation will use
    free = _greedy(llama3_folder, prompt)
    k = next(i for i in range(2, NEW) if free[i] not in free[:i])
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": free[k]}))  # an int this time
    manifest = json.loads((out / "manifest.json").read_text())
    artifacts.write_manifest(out, {key: value for key, value in manifest.items() if key != "files"})
    report = validate_build(out, steps=NEW, prompt_tokens=8, write=False)
    free_running = report.data["free_running"]
    assert report.data["inputs"]["prompt_ids"] == prompt
    assert report.data["inputs"]["forced_ids"] == free  # teacher forcing still runs every step
    assert free_running["stop_ids"] == sorted({tok.eos_id, free[k]})
    assert free_running["reference_tokens"] == free_running["candidate_tokens"] == free[:k]
    assert free_running["first_divergence"] is None
