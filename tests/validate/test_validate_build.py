"""validate_build on real exports (ONNX Runtime vs the Torch reference) and the `validate` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llama_export.cli import main
from llama_export.validate.pipeline import validate_build

STEPS, PROMPT_TOKENS = 8, 32  # short: the tests check the machinery; the CLI defaults measure more


def run(folder, **kwargs):
    return validate_build(folder, steps=STEPS, prompt_tokens=PROMPT_TOKENS, **kwargs)


def test_fp32_export_passes_the_gate(fp32_dir):
    report = run(fp32_dir, bisect="always")
    checks = {c["name"]: c for c in report.data["gate"]["checks"]}
    assert report.passed, checks
    assert checks["max_abs"]["value"] <= 1e-4
    assert report.data["free_running"]["first_divergence"] is None
    assert report.data["noise_floor"] is None  # fp32 is its own noise floor
    layers = report.data["layers"]
    assert layers["available"] and layers["first_bad_layer"] is None
    assert max(layers["errors"]) < 1e-5
    assert len(report.data["per_step"]) == STEPS + 1
    assert (fp32_dir / "report" / "report.json").is_file() and (fp32_dir / "report" / "report.html").is_file()


def test_perturbed_layer_fails_and_bisection_names_it(perturbed_dir):
    report = run(perturbed_dir)  # bisect="auto": runs because the gate fails
    assert not report.passed
    layers = report.data["layers"]
    assert layers["first_bad_layer"] == 1, layers
    assert layers["errors"][0] < 1e-5 < layers["errors"][1]
    assert report.summary()["first_bad_layer"] == 1


def test_fp16_passes_with_numbers_at_the_noise_floor(fp16_dir):
    report = run(fp16_dir, bisect="always")
    assert report.passed, report.data["gate"]["checks"]
    noise, overall = report.data["noise_floor"], report.data["overall"]
    assert noise["dtype"] == "float16"
    # ORT fp16 is about as far from fp32 as Torch fp16 is: same order of magnitude, both ways.
    assert overall["kl"] <= 10 * noise["overall"]["kl"] + 1e-9
    assert overall["max_abs"] <= 10 * noise["overall"]["max_abs"]
    assert overall["max_abs"] > 1e-6  # but it is genuinely fp16, not a silent fp32 graph
    layers = report.data["layers"]
    assert layers["first_bad_layer"] is None
    assert all(e <= 10 * n for e, n in zip(layers["errors"], layers["noise_errors"]))


def test_cli_exit_codes_and_json(fp32_dir, perturbed_dir, tmp_path):
    cli = CliRunner()
    args = ["--steps", "2", "--prompt-tokens", "8", "--quiet"]
    ok = cli.invoke(main, ["validate", str(fp32_dir), *args, "--json"])
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.stdout)
    assert summary["passed"] is True and summary["precision"] == "fp32"
    bad = cli.invoke(main, ["validate", str(perturbed_dir), *args, "--bisect", "never"])
    assert bad.exit_code == 1 and "FAIL" in bad.stdout
    missing = cli.invoke(main, ["validate", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no manifest.json" in missing.stderr and "Traceback" not in missing.output


def test_a_foreign_checkpoint_is_refused(fp32_dir, tmp_path):
    from llama_export.config import SIZES
    from llama_export.errors import UserError
    from llama_export.exporter.checkpoints import save_checkpoint
    from llama_export.exporter.random_init import RandomCheckpoint

    other = tmp_path / "other"
    save_checkpoint(RandomCheckpoint(SIZES["tiny"], seed=5).state_dict(), SIZES["tiny"], other)
    with pytest.raises(UserError, match="fingerprint"):
        run(fp32_dir, checkpoint=other, write=False)
