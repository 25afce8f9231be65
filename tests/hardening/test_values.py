"""Deliver 3: integer/bool tensors where floats are expected are refused naming the tensor; NaN/Inf weights are
refused unless --allow-nonfinite."""

from __future__ import annotations

import threading

import pytest
import torch
from hardening_helpers import assert_one_line_error, leftovers, run_cli, snapshot

from llama_export.errors import UserError
from llama_export.exporter.checkpoints import check_finite, open_checkpoint, save_checkpoint
from llama_export.exporter.sources import TINY_ASSET
from llama_export.exporter.weights import stream_weights


@pytest.fixture
def checkpoint_with(tiny_state, tiny_args, tmp_path):
    def make(name: str, tensor: torch.Tensor):
        folder = tmp_path / "ckpt"
        save_checkpoint({**tiny_state, name: tensor}, tiny_args, folder)
        return folder
    return make


def test_an_integer_weight_is_refused_naming_it(checkpoint_with, tiny_state, tmp_path):
    name = "layers.0.attention.wq.weight"
    folder = checkpoint_with(name, (tiny_state[name] * 100).to(torch.int32))  # cast back to float: all zeros
    before = snapshot(tmp_path)
    outcome = run_cli("generate", "--checkpoint", folder, "--prompt", "hi", "--tokenizer", TINY_ASSET / "tokenizer.model")
    assert_one_line_error(outcome, name, "int32", "not a floating-point type")
    with pytest.raises(UserError, match=f"{name} is int32"):  # the export's path: the weight stream
        stream_weights(open_checkpoint(folder), torch.float32, tmp_path / "x.data", threading.Event())
    (tmp_path / "x.data").unlink(missing_ok=True)
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # two exports (~10 s each on an idle 2-core VM)
def test_an_integer_or_nan_weight_stops_the_export_and_nan_passes_when_allowed(checkpoint_with, tiny_state, tmp_path):
    name = "layers.0.attention.wq.weight"
    out = tmp_path / "out"
    folder = checkpoint_with(name, tiny_state[name].to(torch.int32))
    assert_one_line_error(run_cli("export", "--checkpoint", folder, "--out", out, "--quiet"), name, "int32")
    assert not out.exists() and leftovers(tmp_path) == []
    name = "layers.1.feed_forward.w2.weight"
    poisoned = tiny_state[name].clone()
    poisoned[3, 5] = float("nan")
    folder = checkpoint_with(name, poisoned)
    outcome = run_cli("export", "--checkpoint", folder, "--out", out, "--quiet")
    assert_one_line_error(outcome, name, "NaN or Inf", "--allow-nonfinite")
    assert not out.exists() and leftovers(tmp_path) == []
    allowed = run_cli("export", "--checkpoint", folder, "--out", out, "--quiet", "--allow-nonfinite")
    assert allowed.code == 0, allowed.stderr
    assert (out / "manifest.json").is_file()


def test_a_nan_weight_stops_the_weight_stream_naming_it(checkpoint_with, tiny_state, tmp_path):
    name = "layers.1.feed_forward.w2.weight"
    poisoned = tiny_state[name].clone()
    poisoned[3, 5] = float("inf")
    checkpoint = open_checkpoint(checkpoint_with(name, poisoned))
    with pytest.raises(UserError, match=f"{name} holds NaN or Inf .* fp16"):
        stream_weights(checkpoint, torch.float16, tmp_path / "x.data", threading.Event())
    checkpoint.allow_nonfinite = True
    layout, _ = stream_weights(checkpoint, torch.float16, tmp_path / "y.data", threading.Event())
    assert name in layout


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_the_finite_check_sees_each_kind_of_non_finite_value(value):
    tensor = torch.zeros(1000, dtype=torch.float16)
    check_finite("w", tensor, "fp16")
    tensor[777] = value
    with pytest.raises(UserError, match="w holds NaN or Inf"):
        check_finite("w", tensor, "fp16")
