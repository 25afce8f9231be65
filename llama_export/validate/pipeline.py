"""`validate_build(DIR)`: the exported model in ONNX Runtime (or DIR's engine on a GPU: backend "tensorrt") against
the Torch reference, gated per precision.

Memory: each side's weights are held once, one side at a time — the fp32 reference runs and is freed, then the
Torch model in the candidate's dtype (the noise floor), then the ORT session or the engine, then (only for an
ORT bisection) an ORT session with layer outputs exposed. Nothing but logits and layer outputs ([positions, dim])
outlives a side.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import io_spec
from ..errors import UserError
from . import compare, gate
from .report import REPORT_DIR

BISECT_MODES = ("auto", "always", "never")
LAYER_MAJOR_MODES = ("auto", "always", "never")
BACKENDS = ("ort", "tensorrt")
# An engine's report never replaces the ORT one (which `build` keeps as its validation stage).
REPORT_DIRS = {"ort": REPORT_DIR, "tensorrt": f"{REPORT_DIR}-tensorrt"}
DEFAULT_STEPS, DEFAULT_PROMPT_TOKENS = 32, 64


@dataclass
class Report:
    passed: bool
    data: dict  # everything report.json holds
    path: Path | None = None  # DIR/report when written
    timings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """What `validate --json` prints: the verdict and the numbers behind it."""
        d = self.data
        layers = d.get("layers") or {}
        return {"passed": self.passed, "precision": d["precision"], "folder": d["folder"],
                "checks": d["gate"]["checks"], "overall": d["overall"], "perplexity": d["perplexity"],
                "noise_floor": None if d["noise_floor"] is None else d["noise_floor"]["overall"],
                "first_divergence": d["free_running"]["first_divergence"],
                "first_bad_layer": layers.get("first_bad_layer"),
                "report": None if self.path is None else str(self.path)}


def reference_checkpoint(artifacts, checkpoint=None):
    """The weights the folder was exported from: `checkpoint` if given, else the source the manifest records
    (sources.reopen_source), checked against the manifest's fingerprint."""
    from ..exporter.checkpoints import open_checkpoint
    from ..exporter.sources import reopen_source

    recorded = artifacts.manifest.get("checkpoint", {})
    if checkpoint is not None:
        ckpt = open_checkpoint(checkpoint)
    else:
        ckpt = reopen_source(recorded, artifacts.args, artifacts.folder)
    if ckpt.args != artifacts.args:
        raise UserError(f"checkpoint {ckpt.description} has different hyper-parameters than {artifacts.folder}")
    if recorded.get("fingerprint") and ckpt.fingerprint() != recorded["fingerprint"]:
        raise UserError(f"checkpoint {ckpt.description} is not the one {artifacts.folder} was exported from "
                        "(fingerprint differs); pass the original with --checkpoint PATH")
    return ckpt


def fitting_tokenizer(artifacts):
    """The folder's tokenizer when its ids fit the model's vocabulary, else None."""
    tok = artifacts.tokenizer()
    return tok if tok is not None and tok.vocab_size <= artifacts.args.vocab_size else None


def choose_prompt(artifacts, n_tokens: int, seed: int = 0, tok=None) -> tuple[list[int], dict]:
    """The first `n_tokens` tokens of the held-out corpus text with `tok` (fitting_tokenizer); seeded random tokens
    when there is none (random weights have no meaningful text anyway)."""
    vocab = artifacts.args.vocab_size
    if tok is not None:
        from ..assets.corpus import corpus

        _, heldout = corpus()
        ids = tok.encode(heldout[: 16 * n_tokens])[:n_tokens]  # ~4 chars/token: 16× is plenty
        if len(ids) == n_tokens:
            return ids, {"source": "held-out corpus text (llama_export.assets.corpus)",
                         "tokenizer": {"kind": tok.kind, "path": str(tok.path)}, "text": tok.decode(ids)}
    ids = np.random.default_rng(seed).integers(0, vocab, size=n_tokens).tolist()
    return ids, {"source": f"random token ids (seed {seed}; the folder has no tokenizer that fits)"}


def noise_dtype(artifacts):
    """The Torch dtype the candidate computes in (its KV dtype, per the design), or None for fp32."""
    import torch

    kv = next(t["dtype"] for t in artifacts.manifest["io"]["inputs"] if t["name"] == io_spec.past_key(0))
    return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[kv]



def plan_validation(artifacts, layer_major: str = "auto") -> dict:
    """How to validate within memory: {"split": SplitGraph or None (whole model), "why": str, "memory": dict}.
    Refuses (UserError, one line) when neither way fits the memory limit."""
    from .. import memory
    from .blocks import split_graph

    args, limit = artifacts.args, memory.memory_limit()
    whole, streamed = memory.whole_validation_need(args), memory.streamed_validation_need(args)
    record = {"limit_bytes": limit.bytes, "limit_source": limit.source, "whole_need_bytes": whole.bytes,
              "layer_major_need_bytes": streamed.bytes}
    if layer_major == "never" or (layer_major == "auto" and whole.fits(limit)):
        if not whole.fits(limit):
            raise UserError(whole.shortfall(limit, "validate layer-major instead (--layer-major auto)"))
        return {"split": None, "why": "the whole model fits in memory", "memory": record}
    if not streamed.fits(limit):
        raise UserError(streamed.shortfall(limit, "free memory or raise the limit (build: --no-validate skips validation)"))
    try:
        split = split_graph(artifacts.model_path, args.n_layers)
    except LookupError as exc:
        if layer_major == "auto":
            raise UserError(f"{whole.shortfall(limit, 'and')} the graph cannot be validated layer-major ({exc}); "
                            "export with --target none or onnx, or free memory") from None
        raise UserError(f"--layer-major always: this graph cannot be cut per block ({exc}); use --layer-major "
                        "never") from None
    why = ("asked for (--layer-major always)" if layer_major == "always" else
           f"the whole model does not fit: {whole.shortfall(limit, 'one block at a time instead')}")
    return {"split": split, "why": why, "memory": record}


def validate_build(folder: str | Path, steps: int = DEFAULT_STEPS, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                   bisect: str = "auto", checkpoint: str | Path | None = None, write: bool = True,
                   progress: Callable[[str], None] | None = None, layer_major: str = "auto",
                   verify: bool = True, backend: str = "ort") -> Report:
    """Validate an exported folder; writes DIR/report/ (report.json, report.html, plots) when `write`.

    layer_major: "never" runs the whole model per side (greedy reference, free-running generation), "always"
    the layer-major pass (streamed.py: one block in memory at a time), "auto" the whole model when the memory
    plan (memory.py) says it fits, else layer-major. `verify`: check every file's sha256 against the manifest
    first (sizes are always checked). `backend` "tensorrt": the candidate is DIR's engine on the GPU (whole model,
    no bisection: an engine exposes no layer outputs), checked against the engine's limits before any work; the
    report goes to DIR/report-tensorrt."""
    from ..exporter.artifacts import check_writable, library_versions, load_manifest, tool_info
    from . import streamed

    if bisect not in BISECT_MODES:
        raise UserError(f"bisect must be one of {', '.join(BISECT_MODES)}, not {bisect!r}")
    if layer_major not in LAYER_MAJOR_MODES:
        raise UserError(f"layer_major must be one of {', '.join(LAYER_MAJOR_MODES)}, not {layer_major!r}")
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "tensorrt" and layer_major == "always":
        raise UserError("--layer-major always runs ONNX Runtime one block at a time; --backend tensorrt validates "
                        "the whole engine (use --layer-major auto or never)")
    if steps < 0 or prompt_tokens < 2:
        raise UserError("--steps must be ≥ 0 and the prompt at least 2 tokens")
    say = progress or (lambda _message: None)
    artifacts = load_manifest(folder, verify_hashes=verify)
    precision, args = artifacts.precision, artifacts.args
    if prompt_tokens + steps > args.max_seq_len:
        raise UserError(f"--prompt-tokens {prompt_tokens} + --steps {steps} = {prompt_tokens + steps} tokens exceed "
                        f"the model's context of {args.max_seq_len} (max_seq_len); lower them")
    engine = _engine_candidate(artifacts, prompt_tokens, steps) if backend == "tensorrt" else None
    if write:
        check_writable(artifacts.folder, f"validate writes {artifacts.folder}/{REPORT_DIRS[backend]}: copy the "
                                         "folder somewhere writable first")
    gate.tolerance_for(precision)  # an unknown precision fails before any work
    ckpt = reference_checkpoint(artifacts, checkpoint)
    plan = plan_validation(artifacts, layer_major)
    split = plan["split"]
    if split is not None and engine is not None:
        raise UserError(f"validating the engine needs the whole Torch reference in memory ({plan['why']}); "
                        "validate the ONNX graph layer-major with --backend ort")
    tok = fitting_tokenizer(artifacts)
    # Free-running generation ends at a stop id on both sides (the reference's tokens are cut the same way).
    stop_ids = tok.stop_ids if tok is not None else frozenset()
    timings: dict[str, float] = {}

    def timed(name: str, work: Callable):
        say(name)
        start = time.perf_counter()
        result = work()
        timings[name] = round(time.perf_counter() - start, 3)
        return result

    dtype = noise_dtype(artifacts)
    if split is not None:
        ids, inputs = choose_prompt(artifacts, prompt_tokens + steps, tok=tok)
        prompt, forced = ids[:prompt_tokens], ids[prompt_tokens:]
        inputs["forced"] = "the text's next tokens (layer-major: greedy decoding would need every layer per token)"
        traces = timed("layer-major pass (torch + onnxruntime, one block at a time)", lambda: streamed.streamed_traces(
            ckpt, split, artifacts.folder, prompt, forced, dtype, say))
        reference, candidate, noise = traces["reference"], traces["candidate"], traces.get("noise")
        noise_free = candidate_free = None
    else:
        prompt, inputs = choose_prompt(artifacts, prompt_tokens, tok=tok)
        reference, forced, noise, noise_free, candidate, candidate_free = _whole_model_sides(
            artifacts, ckpt, prompt, steps, dtype, timed, stop_ids, engine)
    reference_free = compare.until_stop(forced, stop_ids)

    result = compare.compare_logits(reference, candidate, prompt)
    noise_result = compare.compare_logits(reference, noise, prompt) if noise is not None else None
    checks = gate.gate_checks(precision, result["overall"], noise_result and noise_result["overall"],
                              result["perplexity"]["delta"], noise_result and noise_result["perplexity"]["delta"])
    passed = all(c.passed for c in checks)

    layers = None
    if split is not None and bisect != "never":  # the per-layer errors are a by-product of the pass
        layers = layer_section(args, precision, reference, candidate, noise, split.hidden_names[1:])
    elif split is None and (bisect == "always" or (bisect == "auto" and not passed)):
        if engine is not None:
            layers = {"available": False, "reason": "an engine exposes no per-layer outputs; bisect the ONNX "
                      "graph with validate --backend ort --bisect always"}
        else:
            layers = timed("layer bisection (onnxruntime)", lambda: _bisect(
                artifacts, args, precision, prompt, forced, reference, noise))

    free_note = None if split is None else "not run: free-running generation needs the whole model in memory"
    data = {
        "schema": "llama-export/validate-report/1",
        "passed": passed,
        "folder": str(Path(folder).absolute()),
        "precision": precision,
        "mode": {"layer_major": split is not None, "why": plan["why"], "memory": plan["memory"]},
        "candidate": {"runner": "onnxruntime (CPUExecutionProvider)", "model": str(artifacts.model_path)}
        if engine is None else {"runner": f"{engine['builder']} {engine['builder_version']} (GPU, KV cache on the "
                                          "device)", "model": str(artifacts.folder / engine["file"])},
        "reference": {"runner": "torch fp32", "checkpoint": ckpt.description,
                      "fingerprint": artifacts.manifest.get("checkpoint", {}).get("fingerprint")},
        "inputs": {**inputs, "prompt_tokens": len(prompt), "steps": steps, "prompt_ids": prompt,
                   "forced_ids": forced, "batch": 1},
        "gate": {"precision": precision, "tolerance": gate.tolerance_table()[precision],
                 "checks": [c.to_dict() for c in checks], "table": gate.tolerance_table()},
        "overall": result["overall"],
        "per_step": result["per_step"],
        "per_position": result["per_position"],
        "perplexity": result["perplexity"],
        "noise_floor": None if noise_result is None else {
            "dtype": str(dtype).removeprefix("torch."), "overall": noise_result["overall"],
            "per_step": noise_result["per_step"], "per_position": noise_result["per_position"],
            "perplexity": noise_result["perplexity"],
            "free_running_first_divergence": None if noise_free is None else compare.first_divergence(
                reference_free, noise_free)},
        "free_running": {"steps": steps, "stop_ids": sorted(stop_ids), "reference_tokens": reference_free,
                         "candidate_tokens": candidate_free,
                         "first_divergence": None if candidate_free is None else compare.first_divergence(
                             reference_free, candidate_free), "note": free_note},
        "layers": layers,
        "timings_s": timings,
        "versions": {"tool": tool_info(), "libraries": library_versions(), "numpy": np.__version__,
                     "exported_with": artifacts.manifest.get("libraries")},
    }
    report = Report(passed, data, timings=timings)
    if write:
        from .report import write_report

        report.path = timed("report", lambda: write_report(data, artifacts.folder, REPORT_DIRS[backend]))
    return report


def _engine_candidate(artifacts, prompt_tokens: int, steps: int) -> dict:
    """The folder's engine section, once the run is known to fit its profiles and this machine to run it (before
    any work: a refusal costs nothing)."""
    from ..engine.profiles import ProfileLimits
    from ..engine.runtime import engine_section, require_gpu_runtime

    engine = engine_section(artifacts)
    ProfileLimits.from_engine(engine, str(artifacts.folder)).check_run(
        1, prompt_tokens, steps, f"--prompt-tokens {prompt_tokens}", f"--steps {steps}")
    require_gpu_runtime(engine)
    return engine


def _whole_model_sides(artifacts, ckpt, prompt, steps, dtype, timed, stop_ids=frozenset(), engine=None):
    """Each side's whole model, one side in memory at a time: the fp32 reference decodes greedily (the forced
    token stream), then the Torch model in the candidate's dtype (the noise floor), then the candidate (ORT, or
    `engine` on the GPU); the free-running generations end at `stop_ids`."""
    import torch

    from ..exporter.checkpoints import load_model
    from .layers import TorchLayerRunner
    from .runners import OrtRunner, TorchRunner

    def torch_side(torch_dtype):
        return TorchLayerRunner(TorchRunner(load_model(ckpt, torch_dtype)))

    reference, forced = timed("reference (torch fp32)", lambda: compare.reference_run(
        torch_side(torch.float32), prompt, steps, capture_layers=True))
    gc.collect()
    noise = noise_free = None
    if dtype is not None:
        def run_noise():
            runner = torch_side(dtype)
            return (compare.forced_run(runner, prompt, forced, True),
                    compare.free_running(runner, prompt, steps, stop_ids))

        noise, noise_free = timed(f"noise floor (torch {str(dtype).removeprefix('torch.')})", run_noise)
        gc.collect()

    def run_candidate():
        if engine is None:
            runner = OrtRunner(artifacts.model_path, artifacts.args)
        else:
            from ..engine.runtime import TensorRTRunner

            runner = TensorRTRunner(artifacts.folder / engine["file"], artifacts.args, engine)
        try:
            return compare.forced_run(runner, prompt, forced), compare.free_running(runner, prompt, steps, stop_ids)
        finally:
            if engine is not None:
                runner.close()

    candidate, candidate_free = timed("candidate (onnxruntime)" if engine is None else "candidate (engine)",
                                      run_candidate)
    gc.collect()
    return reference, forced, noise, noise_free, candidate, candidate_free


def layer_section(args, precision, reference, candidate, noise, tensors) -> dict:
    """Per-layer relative error of the candidate's block outputs vs Torch, and the layer where it jumps."""
    errors = compare.compare_layers(reference, candidate)
    noise_errors = compare.compare_layers(reference, noise) if noise is not None else None
    limits = gate.layer_limits(precision, noise_errors, args.n_layers)
    return {"available": True, "errors": errors, "noise_errors": noise_errors, "limits": limits,
            "first_bad_layer": gate.first_bad_layer(errors, limits), "onnx_tensors": tensors,
            "measure": "relative RMS error ‖cand − ref‖ / ‖ref‖ of each decoder block's output, all positions"}


def _bisect(artifacts, args, precision, prompt, forced, reference, noise) -> dict:
    """The whole-model bisection: a second ORT run with every block's output exposed."""
    from .layers import ort_layer_runner

    try:
        runner, tensors = ort_layer_runner(artifacts.model_path, args)
    except LookupError as exc:
        return {"available": False, "reason": f"layer outputs not found in the graph: {exc}"}
    candidate = compare.forced_run(runner, prompt, forced, capture_layers=True)
    del runner
    gc.collect()
    return layer_section(args, precision, reference, candidate, noise, tensors)


__all__ = ["BACKENDS", "BISECT_MODES", "LAYER_MAJOR_MODES", "Report", "choose_prompt", "noise_dtype", "plan_validation",
           "reference_checkpoint", "validate_build"]
