"""`llama-export build`: every stage in order, into one output folder.

    export (+ fusion target) ─▶ engine (when a builder is present) ─▶ rename into place
      ─▶ validate (report/) ─▶ triton (triton/) ─▶ manifest records each stage

The model and engine are written into a staging sibling and renamed into place together, so an interrupted
build never leaves a folder that looks complete. Validation and the Triton repository come after the rename
because they describe the folder where it lives (paths in report.json); each writes its own staged subfolder,
and the manifest names a stage only once it has finished, so a folder without `validation` in its manifest
was not validated.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .engine.builder import INSTALL_HINT, build_engine, find_builder
from .engine.profiles import ProfileLimits
from .errors import UserError
from .exporter import artifacts
from .exporter.checkpoints import Checkpoint
from .exporter.export import (
    DEFAULT_OPSET,
    QUANTIZED_PRECISIONS,
    check_export_options,
    export_onnx,
    find_tokenizer_for,
    manifest_content,
    prepare_quantization,
)

ENGINE_MODES = ("auto", "require", "skip")
ENGINE_FILE = "engine.plan"
TRITON_INSTALL_HINT = "pip install 'llama-export[triton]'"


@dataclass
class BuildOptions:
    precision: str = "fp32"
    target: str = "none"
    float_dtype: str | None = None  # int8 precisions: the float dtype (default fp32)
    quantization: object | None = None  # graphs.quantize.QuantOptions (export.prepare_quantization)
    opset: int = DEFAULT_OPSET
    engine: str = "auto"
    builder: str = "auto"
    limits: ProfileLimits | None = None  # None: derived from the model (default_limits)
    timing_cache: Path | None = None
    validate: bool = True
    validate_steps: int = 32
    triton: bool | None = None  # None: write the repository when tritonclient is installed


@dataclass
class BuildResult:
    folder: Path
    notes: list[str] = field(default_factory=list)  # what was skipped and why, for the user
    engine: dict | None = None
    passed: bool | None = None  # the validation gate; None when not validated
    report: Path | None = None
    triton_repo: Path | None = None


def default_limits(max_seq_len: int, max_batch: int | None = None, max_input: int | None = None,
                   max_seq: int | None = None) -> ProfileLimits:
    """Engine limits when the user gives none: a 2048-token cache (or the model's context, if shorter), prompts up
    to a quarter of it, batch 1."""
    seq = max_seq or min(max_seq_len, 2048)
    return ProfileLimits(max_batch=max_batch or 1, max_input=max_input or max(1, min(512, seq // 4)), max_seq=seq)


def _triton_available() -> bool:
    return importlib.util.find_spec("tritonclient") is not None


def check_build_options(checkpoint: Checkpoint, options: BuildOptions) -> tuple[str, object] | None:
    """Everything that can be refused is refused here, before anything is written. Returns the builder or None."""
    check_export_options(options.precision, options.opset, options.target, options.float_dtype)
    if options.engine not in ENGINE_MODES:
        raise UserError(f"--engine must be one of {', '.join(ENGINE_MODES)}, not {options.engine!r}")
    builder = None
    if options.engine != "skip":
        builder = find_builder(options.builder)
        if builder is None and options.engine == "require":
            raise UserError(f"--engine require: no TensorRT builder is installed; {INSTALL_HINT}")
        (options.limits or default_limits(checkpoint.args.max_seq_len)).check(checkpoint.args)
    if options.triton and not _triton_available():
        raise UserError(f"--triton needs tritonclient (the Triton config schema): {TRITON_INSTALL_HINT}")
    if options.triton and find_tokenizer_for(checkpoint) is None:
        raise UserError("--triton needs a tokenizer.model next to the weights (the generation front end "
                        "tokenizes); use a checkpoint folder that has one, or --no-triton")
    return builder


def build(checkpoint: Checkpoint, out_dir: str | Path, options: BuildOptions | None = None, quiet: bool = False,
          say: Callable[[str], None] = lambda _message: None, force: bool = False) -> BuildResult:
    """`force`: replace an existing `out_dir` that is not a llama-export output (artifacts.check_replaceable)."""
    options = options or BuildOptions()
    builder = check_build_options(checkpoint, options)
    protect = [getattr(checkpoint, "folder", None)]
    artifacts.check_replaceable(out_dir, force=force, protect=protect)  # before calibration or any export work
    limits = options.limits or default_limits(checkpoint.args.max_seq_len)
    from .exporter.export import _progress_bar

    if options.quantization is None and options.precision in QUANTIZED_PRECISIONS:  # defaults, calibrated here
        options.quantization = prepare_quantization(checkpoint, options.precision)
    result = BuildResult(folder=Path(out_dir).absolute())
    with artifacts.staged_output(result.folder, force=force, protect=protect) as staging:
        with _progress_bar(checkpoint, quiet) as progress:
            exported = export_onnx(checkpoint, staging, options.precision, options.opset, progress, options.target,
                                   options.float_dtype, options.quantization)
        tokenizer = find_tokenizer_for(checkpoint)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, staging / artifacts.TOKENIZER)
        content = manifest_content(checkpoint, options.precision, options.opset, exported, options.target,
                                   options.float_dtype, options.quantization)

        if options.engine == "skip":
            result.notes.append("engine: skipped (--engine skip)")
        elif builder is None:
            result.notes.append(f"engine: skipped, no TensorRT builder is installed ({INSTALL_HINT})")
        else:
            say(f"building the engine with {builder[0]}")
            built = build_engine(exported.model_path, checkpoint.args, staging / ENGINE_FILE, limits,
                                 builder=builder[0], timing_cache=options.timing_cache)
            result.engine = content["engine"] = built.to_manifest()
            result.notes.append(f"engine: {ENGINE_FILE} built by {built.builder} {built.builder_version} "
                                f"in {built.seconds:.1f} s")
        artifacts.write_manifest(staging, content)

    if options.validate:
        from .validate.pipeline import validate_build

        report = validate_build(result.folder, steps=options.validate_steps, progress=say)
        result.passed, result.report = report.passed, report.path
        content["validation"] = {"passed": report.passed, "report": "report/report.json",
                                 "checks": {c["name"]: c["passed"] for c in report.summary()["checks"]}}
        artifacts.write_manifest(result.folder, content)
    else:
        result.notes.append("validation: skipped (--no-validate)")

    write_triton = _triton_available() if options.triton is None else options.triton
    if write_triton and tokenizer is None:
        result.notes.append("triton: skipped, these weights have no tokenizer.model for the front end")
    elif write_triton and result.passed is False:
        result.notes.append("triton: not written, the validation gate failed (see the report)")
    elif write_triton:
        from .triton.repository import write_repository

        say("writing the Triton model repository")
        repo = write_repository(result.folder, result.folder / "triton")
        result.triton_repo = repo.path
        content["triton"] = {"repository": "triton", "models": sorted(repo.models.values())}
        artifacts.write_manifest(result.folder, content)
    elif options.triton is None:
        result.notes.append(f"triton: skipped, tritonclient is not installed ({TRITON_INSTALL_HINT})")
    return result


def engine_info(folder: str | Path) -> dict:
    """The manifest's engine section (plus what identifies the model), for `llama-export engine-info`."""
    built = artifacts.load_manifest(folder)
    engine = built.manifest.get("engine")
    if engine is None:
        raise UserError(f"{folder} has no engine; build one with llama-export build --engine require "
                        f"({INSTALL_HINT})")
    return {"folder": str(Path(folder).absolute()), "size": built.manifest.get("size"),
            "precision": built.precision, "target": built.manifest.get("target"), "engine": engine}


def format_engine_info(info: dict) -> str:
    engine = info["engine"]
    lines = [
        f"engine      {info['folder']}/{engine['file']}  sha256 {engine['sha256'][:16]}…",
        f"builder     {engine['builder']} {engine['builder_version']}  flags {', '.join(engine['flags'])}",
        f"targets     {', '.join(engine['compute_capabilities'])}",
        f"model       {info['size'] or 'custom'}  precision {info['precision']}  target {info['target']}",
        f"limits      {json.dumps(engine['limits'])}",
    ]
    for profile, shapes in engine["profiles"].items():
        ids = shapes["input_ids"]
        kv = next(v for k, v in shapes.items() if k.startswith("past_key_values"))
        lines.append(f"profile     {profile}: input_ids {ids[0]}..{ids[2]}  past {kv[0][2]}..{kv[2][2]}")
    if engine.get("plugins"):
        lines.append(f"plugins     {', '.join(engine['plugins'])}")
    return "\n".join(lines)
