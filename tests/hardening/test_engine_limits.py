"""Issue 15, Deliver 4 for engines: `--backend tensorrt` runs are checked against the ENGINE's profile limits (a
real TensorRT-RTX engine built on CPU with batch 1, prompts up to 8 tokens, 16 tokens of cache) before any GPU
runtime loads: one line naming the limit and the build option that raises it, exit 2, the folder untouched.
Runs that fit get as far as the GPU check, which on a machine without one is the one-line error saying what
is needed (so the limit errors above provably come first)."""

from __future__ import annotations

import pytest
from hardening_helpers import assert_one_line_error, run_cli, snapshot

LONG_PROMPT = "the quick brown fox jumps over the lazy dog"  # more than 8 tokens, far less than the context (256)
SHORT_PROMPT = "the fox"


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


NEEDS_NO_GPU = pytest.mark.skipif(not _no_gpu(), reason="checks the error of a machine without a GPU")


def test_generate_refuses_what_the_engine_cannot_hold(tiny_engine_folder):
    before = snapshot(tiny_engine_folder)
    generate = ("generate", tiny_engine_folder, "--backend", "tensorrt")
    outcome = run_cli(*generate, "--prompt", LONG_PROMPT, "--max-new-tokens", "2")
    assert_one_line_error(outcome, "the prompt (", "exceeds the engine's longest prompt (max_input 8)",
                          "--max-input")
    outcome = run_cli(*generate, "--prompt", SHORT_PROMPT, "--max-new-tokens", "15")
    assert_one_line_error(outcome, "+ --max-new-tokens 15 =", "exceed the engine's KV cache (max_seq 16)",
                          "--max-seq")
    outcome = run_cli(*generate, "--prompt", SHORT_PROMPT, "--max-new-tokens", "16")
    assert_one_line_error(outcome, "--max-new-tokens 16 leaves no room", "(max_seq 16)", "--max-seq")
    outcome = run_cli(*generate, "--prompt", SHORT_PROMPT, "--prompt", SHORT_PROMPT, "--max-new-tokens", "2")
    assert_one_line_error(outcome, "2 prompts exceed the engine's largest batch (max_batch 1)", "--max-batch 2")
    assert snapshot(tiny_engine_folder) == before


def test_validate_refuses_what_the_engine_cannot_hold(tiny_engine_folder):
    before = snapshot(tiny_engine_folder)
    validate = ("validate", tiny_engine_folder, "--backend", "tensorrt", "--quiet")
    outcome = run_cli(*validate, "--prompt-tokens", "9", "--steps", "2")
    assert_one_line_error(outcome, "--prompt-tokens 9 exceeds the engine's longest prompt (max_input 8)",
                          "--max-input 9")
    outcome = run_cli(*validate, "--prompt-tokens", "8", "--steps", "9")
    assert_one_line_error(outcome, "--prompt-tokens 8 + --steps 9 = 17 tokens exceed the engine's KV cache "
                                   "(max_seq 16)", "--max-seq 17")
    outcome = run_cli(*validate)  # the defaults: 64 prompt tokens, 32 steps
    assert_one_line_error(outcome, "--steps 32 leaves no room for a prompt in the engine's KV cache (max_seq 16)",
                          "--max-seq")
    assert snapshot(tiny_engine_folder) == before, "nothing written (no report-tensorrt/)"


@NEEDS_NO_GPU
def test_runs_that_fit_the_engine_stop_at_the_gpu_check(tiny_engine_folder):
    before = snapshot(tiny_engine_folder)
    needs = ("--backend tensorrt needs an NVIDIA GPU, a CUDA build of torch and tensorrt-rtx", "sees no GPU",
             "--backend ort")
    outcome = run_cli("validate", tiny_engine_folder, "--backend", "tensorrt", "--prompt-tokens", "8", "--steps", "8")
    assert_one_line_error(outcome, *needs)
    outcome = run_cli("generate", tiny_engine_folder, "--backend", "tensorrt", "--prompt", SHORT_PROMPT,
                      "--max-new-tokens", "4")
    assert_one_line_error(outcome, *needs)
    # --truncate keeps the prompt's last tokens within the engine's prefill (max_input) as within the model's context
    outcome = run_cli("generate", tiny_engine_folder, "--backend", "tensorrt", "--prompt", LONG_PROMPT * 30,
                      "--max-new-tokens", "4", "--truncate")
    assert_one_line_error(outcome, *needs)
    assert snapshot(tiny_engine_folder) == before


def test_tensorrt_backend_needs_a_folder_with_an_engine(export_copy):
    outcome = run_cli("validate", export_copy, "--backend", "tensorrt", "--quiet")
    assert_one_line_error(outcome, "has no engine", "llama-export build --engine require")
    outcome = run_cli("generate", export_copy, "--backend", "tensorrt", "--prompt", SHORT_PROMPT)
    assert_one_line_error(outcome, "has no engine")
    outcome = run_cli("generate", "--backend", "tensorrt", "--prompt", SHORT_PROMPT)
    assert_one_line_error(outcome, "--backend tensorrt runs an exported folder", "llama-export build")
    outcome = run_cli("validate", export_copy, "--backend", "tensorrt", "--layer-major", "always")
    assert_one_line_error(outcome, "--layer-major always", "--backend tensorrt")
    outcome = run_cli("validate", export_copy, "--backend", "cuda")
    assert_one_line_error(outcome, "'cuda' is not one of 'ort', 'tensorrt'")
