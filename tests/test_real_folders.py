"""The acceptance matrix: every checkpoint-folder kind users download (checkpoint_folders.py) goes through
`llama-export build` (export -> validate -> TensorRT-RTX engine -> Triton repository), `validate DIR` reopens the
source from the manifest alone, and `generate` (torch and ort) continues a prompt with the same greedy tokens as
transformers' LlamaForCausalLM.generate on the same HF folder.

Each kind costs a whole build (export, TensorRT-RTX engine, validation report, Triton repository: ~15-60 s here), so
the default suite runs two kinds that together reach every loader and tokenizer path that matters most — the
tied Llama 3.2 HF folder (tokenizer.json, eos list, rope scaling, GQA, compared with transformers) and the Meta
Llama 3 folder (vocab-parallel shards, interleaved RoPE rows, tiktoken) — and `-m slow` runs the other three."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from checkpoint_folders import KINDS, make_folder
from click.testing import CliRunner

from llama_export.cli import main
from llama_export.exporter.tokenization import load_tokenizer

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
HAS_TRITONCLIENT = importlib.util.find_spec("tritonclient") is not None
DEFAULT_KINDS = {"hf-llama3.2", "meta-llama3"}
HF_KINDS = [k for k, spec in KINDS.items() if spec.layout == "hf"]
PROMPT, NEW_TOKENS = "The for statement", 12


def kind_params(kinds):
    return [pytest.param(k, marks=() if k in DEFAULT_KINDS else pytest.mark.slow) for k in kinds]


def cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"llama-export {' '.join(map(str, args))} -> {result.exit_code}:\n{result.output}"
    return result.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-folders")


@pytest.fixture(scope="module")
def folders(root):
    """kind -> checkpoint folder, made on first use."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = make_folder(kind, root / kind)
        return made[kind]

    return get


@pytest.fixture(scope="module")
def builds(root, folders):
    """kind -> output folder of `llama-export build --checkpoint F`, with an engine where HAS_RTX."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            out = root / f"{kind}-out"
            engine = ["--engine", "require", "--max-seq", "64"] if HAS_RTX else ["--engine", "skip"]
            cli("build", "--checkpoint", folders(kind), "--out", out, "--steps", "8", "--quiet", *engine)
            built[kind] = out
        return built[kind]

    return get


@pytest.mark.parametrize("kind", kind_params(KINDS))
def test_build_passes_and_writes_every_stage(kind, builds, folders):
    out = builds(kind)
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    assert manifest["validation"]["passed"] is True and report["passed"] is True
    assert report["free_running"]["first_divergence"] is None
    assert manifest["checkpoint"]["format"] == KINDS[kind].layout
    assert manifest["checkpoint"]["path"] == str(folders(kind).resolve())
    tokenizer = load_tokenizer(folders(kind))
    assert manifest["tokenizer"]["kind"] == tokenizer.kind
    assert manifest["args"]["tie_embeddings"] == KINDS[kind].tied
    if HAS_RTX:
        assert manifest["engine"]["builder"] == "tensorrt-rtx"
        assert manifest["files"]["engine.plan"]["size"] == (out / "engine.plan").stat().st_size
    if HAS_TRITONCLIENT:
        repo = out / manifest["triton"]["repository"]
        for model in manifest["triton"]["models"]:
            assert (repo / model / "config.pbtxt").is_file()
        front_end = next(repo.glob("*_generate"))
        for name in tokenizer.files:  # the front end tokenizes with the checkpoint's own tokenizer files
            assert (front_end / "1" / name).read_bytes() == (folders(kind) / name).read_bytes()


@pytest.mark.parametrize("kind", kind_params(KINDS))
def test_validate_alone_reopens_the_recorded_source(kind, builds):
    # tied weights also go through layer-major validation, whose head reads the embedding as the output projection
    layer_major = ["--layer-major", "always"] if KINDS[kind].tied else []
    summary = json.loads(cli("validate", builds(kind), "--steps", "2", "--prompt-tokens", "8", "--json", "--quiet",
                             *layer_major))
    assert summary["passed"] is True


def transformers_greedy(folder: Path) -> tuple[list[int], list[int]]:
    """(prompt ids, new ids) from transformers on the folder: AutoTokenizer + LlamaForCausalLM.generate."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=0)
    return prompt[0].tolist(), out[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("kind", kind_params(HF_KINDS))
def test_generate_continues_like_transformers(kind, builds, folders):
    from tokenizer_folders import sentencepiece_protobuf_for_transformers

    from llama_export.exporter.checkpoints import load_model, open_checkpoint
    from llama_export.validate.generation import generate_tokens
    from llama_export.validate.runners import OrtRunner, TorchRunner

    sentencepiece_protobuf_for_transformers()
    folder, out = folders(kind), builds(kind)
    prompt_ids, expected = transformers_greedy(folder)
    assert len(expected) == NEW_TOKENS  # no early stop: every step is compared
    tokenizer = load_tokenizer(folder)
    assert tokenizer.prompt_ids(PROMPT) == prompt_ids
    ckpt = open_checkpoint(folder)
    runners = {"torch": TorchRunner(load_model(ckpt)), "ort": OrtRunner(out / "model.onnx", ckpt.args)}
    for backend, runner in runners.items():
        got = list(generate_tokens(runner, prompt_ids, NEW_TOKENS, stop_ids=tokenizer.stop_ids))
        assert got == expected, backend
    # The commands print the prompt and the decoded continuation of those same tokens.
    text = PROMPT + tokenizer.decode(prompt_ids + expected).removeprefix(tokenizer.decode(prompt_ids))
    assert cli("generate", "--checkpoint", folder, "--prompt", PROMPT, "--max-new-tokens", NEW_TOKENS).rstrip(
        "\n") == text
    assert cli("generate", out, "--backend", "ort", "--prompt", PROMPT, "--max-new-tokens", NEW_TOKENS).rstrip(
        "\n") == text
