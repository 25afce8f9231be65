"""Deliver 4: lengths are checked against the model's context (max_seq_len) before any work."""

from __future__ import annotations

import pytest
from hardening_helpers import assert_one_line_error, run_cli, snapshot

from llama_export.errors import UserError
from llama_export.validate.generation import fit_prompt


def test_fit_prompt_refuses_or_keeps_the_last_tokens():
    ids = list(range(100))
    assert fit_prompt(ids, 10, 200, truncate=False) == ids
    with pytest.raises(UserError, match="100 tokens; with --max-new-tokens 10 that exceeds the model's context of 50"):
        fit_prompt(ids, 10, 50, truncate=False)
    kept = fit_prompt(ids, 10, 50, truncate=True)
    assert kept == [0, *range(61, 100)] and len(kept) + 10 == 50  # BOS kept, then the prompt's last 39 tokens
    with pytest.raises(UserError, match="leaves no room"):
        fit_prompt(ids, 50, 50, truncate=True)


def test_a_prompt_longer_than_the_context_is_refused_or_truncated(export_copy):
    prompt = "the quick brown fox jumps over the lazy dog " * 80  # > 256 tokens (the export's max_seq_len)
    outcome = run_cli("generate", export_copy, "--prompt", prompt, "--max-new-tokens", "2")
    assert_one_line_error(outcome, "exceeds the model's context of 256", "--truncate")
    truncated = run_cli("generate", export_copy, "--prompt", prompt, "--max-new-tokens", "2", "--truncate")
    assert truncated.code == 0, truncated.stderr


def test_validate_refuses_more_tokens_than_the_context_before_any_work(export_copy):
    before = snapshot(export_copy)
    outcome = run_cli("validate", export_copy, "--prompt-tokens", "100000", "--quiet")
    assert_one_line_error(outcome, "--prompt-tokens 100000", "context of 256")
    outcome = run_cli("validate", export_copy, "--prompt-tokens", "200", "--steps", "100", "--quiet")
    assert_one_line_error(outcome, "--steps 100", "context of 256")
    assert snapshot(export_copy) == before
