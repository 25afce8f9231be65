"""The output folder: interrupted exports leave nothing that looks complete; the CLI's export and generate DIR."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from export_helpers import PREVIOUS, InterruptingCheckpoint, previous_output

from llama_export.cli import main
from llama_export.config import ModelArgs
from llama_export.exporter import artifacts
from llama_export.exporter.checkpoints import save_checkpoint
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.random_init import RandomCheckpoint

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


def test_interrupt_while_streaming_keeps_the_previous_folder_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    previous_output(out)
    with pytest.raises(KeyboardInterrupt):
        export_to_folder(InterruptingCheckpoint(ARGS), out, quiet=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging folder left behind"
    assert (out / "manifest.json").read_text() == PREVIOUS
    export_to_folder(RandomCheckpoint(ARGS), out, ExportOptions("fp16"), quiet=True)  # the rerun replaces it
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    built = artifacts.load_manifest(out)
    assert built.args == ARGS and built.precision == "fp16" and built.model_path == out / "model.onnx"
    assert built.tokenizer() is None and "tokenizer" not in built.manifest


def test_load_manifest_refuses_a_foreign_folder(tmp_path):
    from llama_export.errors import UserError

    with pytest.raises(UserError, match="not a llama-export output folder"):
        artifacts.load_manifest(tmp_path)


@pytest.mark.parametrize("argv, fragment", [
    (["--opset", "17"], "opset 17 is too old"),
    (["--precision", "int4"], "unknown precision 'int4'"),
])
def test_bad_export_options_are_one_line_exit_2(argv, fragment):
    result = subprocess.run([sys.executable, "-m", "llama_export.cli", "export", "--size", "tiny", *argv],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def _sentencepiece_model(folder: Path, vocab_size: int) -> None:
    """A tokenizer with exactly the model's vocabulary, so every id the random model emits decodes."""
    import random
    import string

    import sentencepiece as spm

    rng = random.Random(0)
    words = ["the", "for", "statement", "iterates", "over", "item", "list", "and", "prints", "it", "while", "loop", "return", "value", "def", "class"]
    lines = [" ".join(rng.choice(words) for _ in range(12)) + " " +
             "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(8)) for _ in range(400)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())


def test_cli_export_default_out_then_generate_dir_with_ort_equals_torch(tmp_path, monkeypatch, tiny_state,
                                                                       tiny_args):
    ckpt = tmp_path / "mymodel"
    save_checkpoint(tiny_state, tiny_args, ckpt)
    _sentencepiece_model(ckpt, tiny_args.vocab_size)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(ckpt), "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "mymodel-fp32"
    assert (out / "tokenizer.model").read_bytes() == (ckpt / "tokenizer.model").read_bytes()
    manifest = artifacts.load_manifest(out).manifest
    assert manifest["tokenizer"] == {"kind": "sentencepiece", "files": ["tokenizer.model"]}
    assert "tokenizer.model" in manifest["files"]
    prompt = ["--prompt", "the for statement", "--max-new-tokens", "8"]
    ort = runner.invoke(main, ["generate", str(out), "--backend", "ort", *prompt])
    ref = runner.invoke(main, ["generate", "--checkpoint", str(ckpt), *prompt])
    assert ort.exit_code == 0 and ref.exit_code == 0, ort.output + ref.output
    assert ort.output == ref.output and ort.output.startswith("the for statement")
    refused = runner.invoke(main, ["generate", str(out), "--backend", "torch", *prompt])
    assert refused.exit_code == 2 and "--backend torch runs a checkpoint, not an exported folder" in refused.output


@pytest.mark.slow
def test_sigint_to_the_cli_mid_stream_leaves_no_complete_folder_and_the_rerun_succeeds(tmp_path):
    """A real SIGINT to `llama-export export --size small` (125M params: seconds of streaming)."""
    out = tmp_path / "small"
    previous_output(out)
    cmd = [sys.executable, "-m", "llama_export.cli", "export", "--size", "small", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the weights are streaming
        data = list(tmp_path.glob(".small.tmp-*/model.onnx.data"))
        if data and data[0].stat().st_size > 50 << 20:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the export never started streaming weights")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    # 130: the CLI caught the interrupt ("aborted"/"interrupted"); -2: it arrived outside the handler. Either
    # way the folder checks below are what matters.
    assert proc.returncode in (130, -signal.SIGINT), stderr
    assert [p.name for p in tmp_path.iterdir()] == ["small"], "staging folder removed"
    assert (out / "manifest.json").read_text() == PREVIOUS
    subprocess.run(cmd, check=True, timeout=300)
    assert artifacts.load_manifest(out).args.dim == 768
    assert os.path.getsize(out / "model.onnx.data") > 400e6


def test_remembered_sha256_is_used_only_while_the_file_is_unchanged(tmp_path):
    import hashlib

    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    artifacts.remember_sha256(path, "0" * 64)  # what the weight stream records after writing
    assert artifacts.sha256_of(path) == "0" * 64  # trusted: no second read of a file just hashed
    renamed = tmp_path / "renamed.bin"
    path.rename(renamed)  # the staging folder's rename keeps the identity
    assert artifacts.sha256_of(renamed) == "0" * 64
    with open(renamed, "ab") as f:
        f.write(b"d")
    assert artifacts.sha256_of(renamed) == hashlib.sha256(b"abcd").hexdigest()
