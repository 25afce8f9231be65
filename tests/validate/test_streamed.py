"""Layer-major (streamed) validation gives the metrics of the whole-model comparison on the same token stream.

Tolerance. The Torch sides of the streamed pass run the token stream as one causal pass per block, the
whole-model sides prefill then decode with a KV cache: the same function, so they differ by float rounding only
(fp32 logits and block outputs within 5e-5; fp16 ones within 4 fp16 ulps of the largest logit). The ORT candidate runs the same KV loop both ways: in fp32 it agrees
to 1e-6; in fp16 it rounds the hidden state to fp16 at every block boundary, where ORT running the whole graph
keeps it in fp32 between the casts it inserts on CPU, so the two candidate runs differ by about as much as the
candidate differs from the reference. Stated tolerance: fp32 — top-1 / top-5 equal, max |Δlogit| within 5e-5,
KL within 1e-10 (both are rounding, ~1e-12), perplexities within 1e-6 relative, per-layer errors within 10%;
fp16 — top-1 equal, and KL, perplexity Δ and each layer's error of the two ways differ by less than 5× the fp16
noise floor's own (the difference fp16 itself makes; 5× is the gate's own allowance over the noise floor).
"""

from __future__ import annotations

import numpy as np
import pytest

from llama_export.exporter.artifacts import load_manifest
from llama_export.exporter.checkpoints import load_model
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.validate import compare, pipeline
from llama_export.validate.blocks import split_graph
from llama_export.validate.layers import TorchLayerRunner, ort_layer_runner
from llama_export.validate.runners import TorchRunner
from llama_export.validate.streamed import streamed_traces


def whole_and_streamed(folder, prompt_tokens=12, steps=6):
    artifacts = load_manifest(folder)
    ckpt = pipeline.reference_checkpoint(artifacts)
    ids, _ = pipeline.choose_prompt(artifacts, prompt_tokens + steps)
    prompt, forced = ids[:prompt_tokens], ids[prompt_tokens:]
    dtype = pipeline.noise_dtype(artifacts)
    split = split_graph(artifacts.model_path, artifacts.args.n_layers)
    streamed = streamed_traces(ckpt, split, artifacts.folder, prompt, forced, dtype)
    whole = {"reference": compare.forced_run(TorchLayerRunner(TorchRunner(load_model(ckpt))), prompt, forced, True)}
    if dtype is not None:
        whole["noise"] = compare.forced_run(TorchLayerRunner(TorchRunner(load_model(ckpt, dtype))), prompt, forced,
                                            True)
    runner, _ = ort_layer_runner(artifacts.model_path, artifacts.args)
    whole["candidate"] = compare.forced_run(runner, prompt, forced, True)
    return prompt, whole, streamed


def assert_agree(folder):
    prompt, whole, streamed = whole_and_streamed(folder)
    fp32 = "noise" not in whole
    for side in whole:
        atol = {"candidate": 1e-6, "reference": 5e-5}.get(side)
        if side == "noise":  # fp16 Torch: the two ways round differently, within a few fp16 ulps of the logits
            atol = 4 * float(np.finfo(np.float16).eps) * float(np.abs(whole[side].logits).max())
        if side != "candidate" or fp32:
            np.testing.assert_allclose(streamed[side].logits, whole[side].logits, atol=atol, rtol=0)
            for s, w in zip(streamed[side].layers, whole[side].layers):
                np.testing.assert_allclose(s, w, atol=atol, rtol=0)
    ways = {name: compare.compare_logits(t["reference"], t["candidate"], prompt) for name, t in
            (("whole", whole), ("streamed", streamed))}
    layer_errors = {name: compare.compare_layers(t["reference"], t["candidate"]) for name, t in
                    (("whole", whole), ("streamed", streamed))}
    w, s = ways["whole"], ways["streamed"]
    assert s["overall"]["top1"] == w["overall"]["top1"]
    if fp32:
        assert s["overall"]["top5_overlap"] == w["overall"]["top5_overlap"]
        assert abs(s["overall"]["max_abs"] - w["overall"]["max_abs"]) <= 5e-5
        assert abs(s["overall"]["kl"] - w["overall"]["kl"]) <= 1e-10
        assert s["perplexity"]["candidate"] == pytest.approx(w["perplexity"]["candidate"], rel=1e-6)
        assert s["perplexity"]["reference"] == pytest.approx(w["perplexity"]["reference"], rel=1e-6)
        assert layer_errors["streamed"] == pytest.approx(layer_errors["whole"], rel=0.1)
    else:
        noise = compare.compare_logits(whole["reference"], whole["noise"], prompt)
        assert abs(s["overall"]["kl"] - w["overall"]["kl"]) < 5 * noise["overall"]["kl"]
        assert abs(s["perplexity"]["delta"] - w["perplexity"]["delta"]) < 5 * noise["perplexity"]["delta"]
        noise_layers = compare.compare_layers(whole["reference"], whole["noise"])
        for a, b, n in zip(layer_errors["streamed"], layer_errors["whole"], noise_layers):
            assert abs(a - b) < 5 * n


def test_streamed_matches_whole_fp32(fp32_dir):
    assert_agree(fp32_dir)


def test_streamed_matches_whole_fp16(fp16_dir):
    assert_agree(fp16_dir)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_streamed_matches_whole_small(tmp_path, precision):
    from llama_export.config import SIZES

    folder = export_to_folder(RandomCheckpoint(SIZES["small"], 0), tmp_path / precision, ExportOptions(precision),
                              quiet=True)
    assert_agree(folder)


def test_validate_layer_major_report(fp16_dir, tmp_path, monkeypatch):
    """Under a memory limit too small for the whole model, `auto` validates layer-major and says why; the
    report has the bisection from the same pass and no free-running generation."""
    from llama_export import memory

    args = load_manifest(fp16_dir).args
    between = (memory.whole_validation_need(args).bytes + memory.streamed_validation_need(args).bytes) // 2
    assert memory.streamed_validation_need(args).bytes < between
    monkeypatch.setenv(memory.LIMIT_ENV, str(between))
    report = pipeline.validate_build(fp16_dir, steps=4, prompt_tokens=8, write=False)
    assert report.data["mode"]["layer_major"] is True
    assert "does not fit" in report.data["mode"]["why"]
    assert report.passed
    assert report.data["layers"]["available"] and len(report.data["layers"]["errors"]) == args.n_layers
    assert report.data["free_running"]["candidate_tokens"] is None
    assert "whole model" in report.data["free_running"]["note"]


def test_validate_refuses_under_tiny_limit(fp16_dir, monkeypatch):
    from llama_export import memory
    from llama_export.errors import UserError

    monkeypatch.setenv(memory.LIMIT_ENV, "1M")
    with pytest.raises(UserError, match=r"layer-major validation needs ~.* GB .* limit is 0\.0 GB"):
        pipeline.validate_build(fp16_dir, steps=2, prompt_tokens=4, write=False)


def test_ort_target_does_not_split(tmp_path):
    """The ort target fuses each block's residual Add into the next block's norm: no clean cut."""
    from llama_export.config import SIZES

    folder = export_to_folder(RandomCheckpoint(SIZES["tiny"], 0), tmp_path / "ort", ExportOptions(target="ort"),
                              quiet=True)
    with pytest.raises(LookupError, match="do not separate"):
        split_graph(folder / "model.onnx", SIZES["tiny"].n_layers)



