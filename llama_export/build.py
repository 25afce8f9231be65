"""`llama-export build`: every stage in order, into one output folder, each stage kept as soon as it is done.

    memory plan (memory.py, before anything runs) ─▶ export ─▶ engine ─▶ validate (report/) ─▶ triton (triton/)

The export is written into a staging sibling and renamed into place as soon as it is complete; the engine
(renamed from a temporary file), the report and the Triton repository (each a staged folder) are added to it
one by one, and the manifest names a stage only once its output is in place, with the inputs it was made from
(`stages`: hashes of the model files, options). A later stage that fails or is killed never costs an earlier
one; running the same build again skips every stage whose output is there and whose inputs match ("kept"),
and redoes the rest. A folder without `validation` in its manifest was not validated.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import memory
from .engine.builder import INSTALL_HINT, Builder, build_engine, find_builder
from .engine.profiles import ProfileLimits
from .errors import UserError
from .exporter import artifacts
from .exporter.checkpoints import Checkpoint
from .exporter.export import copy_tokenizer, export_onnx, find_tokenizer_for, manifest_content, progress_bar
from .exporter.options import ExportOptions

ENGINE_MODES = ("auto", "require", "skip")
ENGINE_FILE = "engine.plan"
TRITON_INSTALL_HINT = "pip install 'llama-export[triton]'"


@dataclass(frozen=True)
class BuildOptions:
    export: ExportOptions = field(default_factory=ExportOptions)
    engine: str = "auto"  # ENGINE_MODES
    builder: str = "auto"
    limits: ProfileLimits | None = None  # None: derived from the model (default_limits)
    timing_cache: Path | None = None
    validate: bool = True
    validate_steps: int = 32
    triton: bool | None = None  # None: write the repository when tritonclient is installed
    layer_major: str = "auto"  # validation: one block in memory at a time (auto: when the whole model does not fit)

    def __post_init__(self):
        if self.engine not in ENGINE_MODES:
            raise UserError(f"--engine must be one of {', '.join(ENGINE_MODES)}, not {self.engine!r}")


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


def check_build_options(checkpoint: Checkpoint, options: BuildOptions) -> Builder | None:
    """What depends on the checkpoint or the installed packages is refused here, before anything is written (the
    options themselves were checked when they were made). Returns the builder or None."""
    builder = None
    if options.engine != "skip":
        builder = find_builder(options.builder)
        if builder is None and options.engine == "require":
            raise UserError(f"--engine require: no TensorRT builder is installed; {INSTALL_HINT}")
        (options.limits or default_limits(checkpoint.args.max_seq_len)).check(checkpoint.args)
    if options.triton and not _triton_available():
        raise UserError(f"--triton needs tritonclient (the Triton config schema): {TRITON_INSTALL_HINT}")
    if options.triton and find_tokenizer_for(checkpoint) is None:
        raise UserError("--triton needs a tokenizer next to the weights (tokenizer.json or tokenizer.model: the "
                        "generation front end tokenizes); use a checkpoint folder that has one, or --no-triton")
    return builder


def plan_memory(checkpoint: Checkpoint, options: BuildOptions, builder) -> list[str]:
    """Every stage's peak memory against the limit, before anything is written. A stage that cannot fit is
    refused (UserError: the export, validation, --engine require) or skipped (--engine auto: the note returned)."""
    args, limit = checkpoint.args, memory.memory_limit()
    need = memory.export_need(args)
    if not need.fits(limit):
        raise UserError(need.shortfall(limit, "free memory or raise the limit"))
    notes = []
    if builder is not None and options.engine != "skip":
        need = memory.engine_need(memory.estimated_weight_bytes(args, options.export.precision), builder.name)
        if not need.fits(limit) and options.engine == "require":
            raise UserError(need.shortfall(limit, "build the engine on a machine with more memory, or --engine auto "
                                                  "to skip it"))
        if not need.fits(limit):
            notes.append("engine: skipped up front: " + need.shortfall(limit, "build it on a machine with more "
                                                                             "memory (--engine skip silences this)"))
    if options.validate:
        whole, streamed = memory.whole_validation_need(args), memory.streamed_validation_need(args)
        if not streamed.fits(limit) and not whole.fits(limit):
            raise UserError(streamed.shortfall(limit, "free memory, or --no-validate"))
    return notes


def export_inputs(checkpoint: Checkpoint, options: BuildOptions) -> dict:
    """What the export depends on: an existing export with the same inputs is kept."""
    export = options.export
    quantization = export.quantization.manifest() if export.quantization is not None else None
    tokenizer = find_tokenizer_for(checkpoint)  # its files are copied with the export
    return {"checkpoint": checkpoint.fingerprint(), "args": checkpoint.args.to_dict(), "precision": export.precision,
            "target": export.target, "opset": export.opset, "float_dtype": export.float_dtype,
            "quantization": quantization, "tool": artifacts.tool_info()["version"],
            "tokenizer": None if tokenizer is None else {name: artifacts.sha256_of(tokenizer.folder / name)
                                                         for name in tokenizer.files}}


def _model_hashes(content: dict) -> dict:
    return {name: entry["sha256"] for name, entry in content["files"].items() if name.startswith("model.onnx")}


def _tokenizer_hashes(content: dict) -> dict:
    """sha256 of the tokenizer's files: validation (prompt text, stop ids) and the Triton front end use them."""
    names = (content.get("tokenizer") or {}).get("files", [])
    return {name: content["files"][name]["sha256"] for name in names if name in content["files"]}


def _kept(content: dict | None, stage: str, inputs: dict) -> bool:
    return content is not None and content.get("stages", {}).get(stage) == inputs


def _existing_export(folder: Path, inputs: dict, say) -> dict | None:
    """The manifest of an existing export made from the same inputs whose files are intact (sizes and sha256
    as recorded), else None."""
    try:
        content = artifacts.load_manifest(folder).manifest
    except UserError:
        return None
    if not _kept(content, "export", inputs):
        return None
    say("export: checking the existing files against the manifest")
    for name, entry in content["files"].items():
        path = folder / name
        if name == ENGINE_FILE:
            continue  # the engine stage checks its own file
        if not path.is_file() or path.stat().st_size != entry["size"] or artifacts.sha256_of(path) != entry["sha256"]:
            return None
    return content


def build(checkpoint: Checkpoint, out_dir: str | Path, options: BuildOptions | None = None, quiet: bool = False,
          say: Callable[[str], None] = lambda _message: None, force: bool = False) -> BuildResult:
    """`force`: replace an existing `out_dir` that is not a llama-export output (artifacts.check_replaceable)."""
    options = options or BuildOptions()
    builder = check_build_options(checkpoint, options)
    protect = [getattr(checkpoint, "folder", None)]
    artifacts.check_replaceable(out_dir, force=force, protect=protect)  # before calibration or any export work
    limits = options.limits or default_limits(checkpoint.args.max_seq_len)
    result = BuildResult(folder=Path(out_dir).absolute())
    engine_notes = plan_memory(checkpoint, options, builder)
    for note in engine_notes:  # said before the export starts; repeated among the notes at the end
        say(note)
    folder = result.folder

    artifacts.clean_stale_siblings(folder)  # a killed run's staging folders, also when its export is kept
    _remove_stale_engines(folder)
    inputs = export_inputs(checkpoint, options)
    content = _existing_export(folder, inputs, say)
    if content is not None:
        say("export: kept, the folder holds an export of the same inputs")
        content = {k: v for k, v in content.items() if k != "files"}
    else:
        content = _export(checkpoint, options, folder, inputs, quiet, force, protect)
    artifacts.write_manifest(folder, content)  # drops stale entries (a killed stage's leftovers are not listed)
    written = artifacts.load_manifest(folder).manifest
    models, tokenizer = _model_hashes(written), _tokenizer_hashes(written)

    _engine_stage(checkpoint, options, builder, limits, folder, content, models, engine_notes, result, say)

    if options.validate:
        stage = {"models": models, "tokenizer": tokenizer, "steps": options.validate_steps,
                 "layer_major": options.layer_major}
        if _kept(content, "validation", stage) and (folder / "report" / "report.json").is_file():
            say("validation: kept, report/ was made from the same model and options")
            result.passed, result.report = content["validation"]["passed"], folder / "report"
        else:
            from .validate.pipeline import validate_build

            report = validate_build(folder, steps=options.validate_steps, progress=say,
                                    layer_major=options.layer_major)
            result.passed, result.report = report.passed, report.path
            content["validation"] = {"passed": report.passed, "report": "report/report.json",
                                     "layer_major": report.data["mode"]["layer_major"],
                                     "checks": {c["name"]: c["passed"] for c in report.summary()["checks"]}}
            content.setdefault("stages", {})["validation"] = stage
            artifacts.write_manifest(folder, content)
    else:
        result.notes.append("validation: skipped (--no-validate)")

    write_triton = _triton_available() if options.triton is None else options.triton
    if write_triton and not tokenizer:
        result.notes.append("triton: skipped, these weights have no tokenizer for the front end")
    elif write_triton and result.passed is False:
        result.notes.append("triton: not written, the validation gate failed (see the report)")
    elif write_triton:
        stage = {"models": models, "tokenizer": tokenizer, "engine": (content.get("engine") or {}).get("sha256")}
        if _kept(content, "triton", stage) and (folder / "triton").is_dir():
            say("triton: kept, triton/ was made from the same model and engine")
        else:
            from .triton.repository import write_repository

            say("writing the Triton model repository")
            # triton/ lives inside this output folder, which the build owns: its model folders are replaced
            # even when an older version wrote them without a llama-export.json marker
            repo = write_repository(folder, folder / "triton", force=True)
            content["triton"] = {"repository": "triton", "models": sorted(repo.models.values())}
            content.setdefault("stages", {})["triton"] = stage
            artifacts.write_manifest(folder, content)
        result.triton_repo = folder / "triton"
    elif options.triton is None:
        result.notes.append(f"triton: skipped, tritonclient is not installed ({TRITON_INSTALL_HINT})")
    return result


def _export(checkpoint: Checkpoint, options: BuildOptions, folder: Path, inputs: dict, quiet: bool, force: bool,
            protect: list) -> dict:
    """A new export, renamed into place as soon as it is complete (a previous folder's stages go with it)."""
    with artifacts.staged_output(folder, force=force, protect=protect) as staging:
        with progress_bar(checkpoint, quiet) as progress:
            exported = export_onnx(checkpoint, staging, options.export, progress)
        tokenizer = copy_tokenizer(checkpoint, staging)
        content = manifest_content(checkpoint, exported, tokenizer)
        content["stages"] = {"export": inputs}
        artifacts.write_manifest(staging, content)
    return content


def _engine_stage(checkpoint, options, builder, limits, folder: Path, content: dict, models: dict,
                  engine_notes: list[str], result: BuildResult, say) -> None:
    plan = folder / ENGINE_FILE
    stage = None if builder is None else {"models": models, "builder": builder.name, "limits": limits.to_dict(),
                                          "builder_version": getattr(builder.module, "__version__", "")}
    if options.engine == "skip":
        result.notes.append("engine: skipped (--engine skip)")
    elif builder is None:
        result.notes.append(f"engine: skipped, no TensorRT builder is installed ({INSTALL_HINT})")
    elif engine_notes:
        result.notes += engine_notes
    elif (_kept(content, "engine", stage) and plan.is_file()
          and artifacts.sha256_of(plan) == content.get("engine", {}).get("sha256")):
        say(f"engine: kept, {ENGINE_FILE} was built from the same model and options")
        result.engine = content["engine"]
        return
    else:
        say(f"building the engine with {builder.name}")
        tmp = folder / f".{ENGINE_FILE}.tmp-{os.getpid()}"
        try:
            built = build_engine(folder / content["model"], checkpoint.args, tmp, limits, builder=builder.name,
                                 timing_cache=options.timing_cache)
            os.replace(tmp, plan)
        finally:
            tmp.unlink(missing_ok=True)
        built.plan = plan
        result.engine = content["engine"] = built.to_manifest()
        content.setdefault("stages", {})["engine"] = stage
        artifacts.write_manifest(folder, content)
        result.notes.append(f"engine: {ENGINE_FILE} built by {built.builder} {built.builder_version} "
                            f"in {built.seconds:.1f} s")
        return
    recorded = content.get("stages", {}).get("engine") or {}
    if (plan.exists() or "engine" in content) and recorded.get("models") != models:
        plan.unlink(missing_ok=True)  # an engine of another model does not describe this folder
        content.pop("engine", None)
        content.get("stages", {}).pop("engine", None)
        artifacts.write_manifest(folder, content)


def _remove_stale_engines(folder: Path) -> None:
    """A killed build's half-written engine (its PID is gone) is not listed in the manifest: remove it."""
    for stale in folder.glob(f".{ENGINE_FILE}.tmp-*") if folder.is_dir() else []:
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not artifacts._process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def engine_info(folder: str | Path, verify: bool = True) -> dict:
    """The manifest's engine section (plus what identifies the model), for `llama-export engine-info`.
    `verify`: check every file's sha256 (the plan's included) against the manifest first."""
    from .engine.runtime import engine_section

    built = artifacts.load_manifest(folder, verify_hashes=verify)
    engine = engine_section(built, INSTALL_HINT)
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
