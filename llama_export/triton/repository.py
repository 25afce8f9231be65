"""Write a Triton model repository for a built output folder (`llama-export triton DIR --repo REPO`).

    REPO/README.md
    REPO/<name>_onnx/config.pbtxt, 1/model.onnx, 1/model.onnx.data          onnxruntime backend
    REPO/<name>_generate/config.pbtxt, 1/model.py, 1/<tokenizer files>,     python backend, decoupled, CPU:
                         1/llama_export/...  (vendored pure-Python modules)  ONNX Runtime in-process on <name>_onnx
    REPO/<name>_complete/...  (as <name>_generate, not decoupled)            unary: one response (HTTP)
    REPO/<name>_plan/config.pbtxt, 1/model.plan                              tensorrt_plan   } only when DIR has
    REPO/<name>_generate_trt/...  (as <name>_generate)                       python, BLS     } an engine

Every config is a protobuf checked against Triton's schema and the model before it is written (checks.py).
REPO may already hold other models: each model folder is staged and renamed into place on its own
(artifacts.staged_output), the others are never touched, and a model folder of the same name is replaced only
when llama-export wrote it (its llama-export.json says so) or with --force.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import io_spec
from ..errors import UserError
from ..exporter.artifacts import Artifacts, load_manifest, staged_output, tool_info
from . import checks, configs, protocol
from .containers import container_advice

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# The pure-Python modules the front end runs (none imports torch, onnx or tritonclient at module level).
TOKENIZATION = ("__init__.py", "base.py", "chat.py", "detect.py", "hf_json.py", "llama3_tiktoken.py",
                "sentencepiece_model.py")
VENDORED_MODULES = ("errors.py", "config.py", "io_spec.py", "validate/runners.py", "validate/generation.py",
                    "validate/batching.py", *(f"exporter/tokenization/{name}" for name in TOKENIZATION),
                    "triton/protocol.py", "triton/streaming.py", "triton/scheduler.py")
# These get an empty __init__.py (the real ones may grow imports); exporter/tokenization keeps its own (copied above).
VENDORED_PACKAGES = ("", "validate", "exporter", "exporter/tokenization", "triton")
# In each model folder: marks it as llama-export's, so a rerun may replace it (Triton reads only config.pbtxt and
# the numbered version folders, and ignores other files).
MODEL_MARKER = "llama-export.json"
README_MARK = "<!-- written by llama-export: replaced by its next run -->"
# Triton model names become folder names and URL path segments.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Repository:
    path: Path
    models: dict[str, str]  # role (onnx, generate, complete, plan, generate_trt) -> model name
    tensorrt: str | None  # "builder version" the plan needs, None without an engine


def model_base_name(built: Artifacts) -> str:
    name = built.manifest.get("size") or "llama"
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "llama"


def kv_dtype_of(built: Artifacts) -> str:
    """The KV cache dtype the export wrote into the manifest's io section."""
    past = io_spec.past_key(0)
    for tensor in built.manifest.get("io", {}).get("inputs", []):
        if tensor["name"] == past:
            return tensor["dtype"]
    raise UserError(f"{built.folder}/manifest.json has no io section naming {past}; rebuild {built.folder}")


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link when possible: weights are large and never modified in place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_config(folder: Path, config) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(checks.checked_text(config), encoding="utf-8")


def vendor_package(target: Path) -> None:
    """Copy the front end's llama_export modules under `target/llama_export/`."""
    for package in VENDORED_PACKAGES:
        init = target / "llama_export" / package / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text('"""Vendored subset of llama_export for the Triton front end."""\n', encoding="utf-8")
    for module in VENDORED_MODULES:
        shutil.copyfile(PACKAGE_ROOT / module, target / "llama_export" / module)


def _write_frontend(model_dir: Path, tokenizer, config) -> None:
    checks.check_frontend(config, decoupled=config.model_transaction_policy.decoupled)
    version = model_dir / "1"
    version.mkdir(parents=True)
    shutil.copyfile(Path(__file__).with_name("frontend_model.py"), version / "model.py")
    tokenizer.copy_to(version)
    vendor_package(version)
    _write_config(model_dir, config)


def check_model_name(name: str) -> str:
    """A Triton model name prefix: letters, digits, `_ . -`; no `..` and no leading dot (a hidden folder)."""
    if not _MODEL_NAME.fullmatch(name) or ".." in name or name.startswith("."):
        raise UserError(f"--name {name!r} is not a valid Triton model name: use letters, digits, '_', '.' and '-' "
                        "(no '..', no leading '.')")
    return name


def check_repository(repo: str | Path, folder: Path) -> Path:
    """REPO may be any folder except the export itself or one holding it (a model folder there would become part
    of the export, or replace it)."""
    if str(repo).strip() == "":
        raise UserError("--repo is empty (an unset shell variable?); name the repository folder")
    repo = Path(repo).absolute()
    export = folder.resolve()
    if repo.resolve() == export or repo.resolve() in export.parents:
        raise UserError(f"--repo {repo} is the exported folder or holds it; use a separate folder (the default is "
                        f"{folder}/triton)")
    if repo.exists() and not repo.is_dir():
        raise UserError(f"--repo {repo} exists and is not a folder; choose another path")
    return repo


def _write_readme(repo: Path, text: str) -> None:
    """REPO/README.md describes the models of the last run; a README someone else wrote stays."""
    readme = repo / "README.md"
    if readme.exists() and README_MARK not in readme.read_text(encoding="utf-8", errors="replace"):
        return
    staging = repo / f".README.md.tmp-{os.getpid()}"
    staging.write_text(f"{text}\n{README_MARK}\n", encoding="utf-8")
    staging.replace(readme)


def write_repository(folder: str | Path, repo: str | Path, name: str | None = None,
                     instances: int = 2, batching: bool = True, max_batch: int = 16,
                     max_tokens: int | None = None, max_prefill_tokens: int | None = None, force: bool = False,
                     verify: bool = True) -> Repository:
    """Write REPO for the built folder DIR (see the module docstring); returns what was written.

    batching: the decoupled front end batches requests in flight (one instance owning every core, up to
    max_batch sequences and max_tokens KV tokens; the requests waiting at a step boundary are prefilled in one
    call of at most max_prefill_tokens padded tokens, default the longest prompt accepted); without it, `instances` serial instances of one ORT thread
    each (the layout before in-flight batching, kept as the benchmark baseline). The unary sibling always has
    `instances` instances. `verify`: check DIR's files against their sha256 first (sizes are always checked);
    `force`: replace model folders of the same names that llama-export did not write."""
    built = load_manifest(folder, verify_hashes=verify)
    repo = check_repository(repo, built.folder)
    if name is not None:
        check_model_name(name)
    tokenizer = built.tokenizer()
    if tokenizer is None:
        raise UserError(f"{built.folder} has no tokenizer; the generation front end needs one "
                        "(export from a checkpoint folder with tokenizer.json or tokenizer.model)")
    args, kv_dtype = built.args, kv_dtype_of(built)
    base = name or model_base_name(built)
    models = {"onnx": f"{base}_onnx", "generate": f"{base}_generate", "complete": f"{base}_complete"}
    engine = built.manifest.get("engine")
    plan = built.folder / engine["file"] if engine else None
    if plan is not None and not plan.is_file():
        raise UserError(f"{plan} is missing but manifest.json lists an engine; rebuild {built.folder}")
    if engine:
        models |= {"plan": f"{base}_plan", "generate_trt": f"{base}_generate_trt"}

    onnx_config = configs.onnx_model_config(models["onnx"], args, kv_dtype)
    checks.check_model_io(onnx_config, args, kv_dtype)
    checks.check_against_onnx(onnx_config, built.model_path)
    repo.mkdir(parents=True, exist_ok=True)
    marker = json.dumps({"tool": tool_info(), "source": str(built.folder.absolute())}, indent=2, sort_keys=True)
    with contextlib.ExitStack() as stack:  # every model staged first; all renamed into place at the end
        staged = {role: stack.enter_context(staged_output(repo / model, force=force, protect=[built.folder],
                                                          option="--repo model folder", marker=MODEL_MARKER))
                  for role, model in models.items()}
        onnx_dir = staged["onnx"] / "1"
        _link_or_copy(built.model_path, onnx_dir / "model.onnx")
        data = built.manifest.get("external_data")
        if data:
            _link_or_copy(built.folder / data, onnx_dir / data)
        _write_config(staged["onnx"], onnx_config)
        max_seq = args.max_seq_len
        # Spinning ORT threads starve the scheduler thread and gRPC between steps, and on a loaded machine
        # decode slower than sleeping ones (docs/BENCHMARKS.md, "Serving").
        in_flight = {"instances": 1, "ort_threads": 0, "ort_spinning": False,
                     "scheduler": protocol.SCHEDULER_IN_FLIGHT}
        serial = {"instances": instances, "ort_threads": 1, "scheduler": protocol.SCHEDULER_SERIAL}
        for role, decoupled in (("generate", True), ("complete", False)):
            layout = in_flight if batching and decoupled else serial
            _write_frontend(staged[role], tokenizer, configs.frontend_config(
                models[role], args, kv_dtype, max_input=max_seq - 1, max_seq=max_seq,
                onnx_model=f"{models['onnx']}/1/model.onnx", decoupled=decoupled, max_batch=max_batch,
                max_tokens=max_tokens, max_prefill_tokens=max_prefill_tokens, **layout))
        if engine:
            plan_config = configs.plan_model_config(models["plan"], args, kv_dtype, engine)
            checks.check_model_io(plan_config, args, kv_dtype)
            checks.check_against_profiles(plan_config, engine)
            _link_or_copy(plan, staged["plan"] / "1" / "model.plan")
            _write_config(staged["plan"], plan_config)
            limits = engine["limits"]
            _write_frontend(staged["generate_trt"], tokenizer, configs.frontend_config(
                models["generate_trt"], args, kv_dtype, max_input=limits["max_input"], max_seq=limits["max_seq"],
                plan_model=models["plan"], max_batch=min(max_batch, limits.get("max_batch", 1)),
                max_prefill_tokens=max_prefill_tokens,
                scheduler=protocol.SCHEDULER_IN_FLIGHT if batching else protocol.SCHEDULER_SERIAL))
        for model_dir in staged.values():
            (model_dir / MODEL_MARKER).write_text(marker + "\n", encoding="utf-8")
    _write_readme(repo, repository_readme(built, models, engine))
    tensorrt = configs.tensorrt_requirement(engine) if engine else None
    return Repository(repo, models, tensorrt)


# What the front end's Python must import for each tokenizer kind (exporter/tokenization), besides jinja2 for chat.
TOKENIZER_PACKAGES = {"sentencepiece": "sentencepiece", "hf": "tokenizers", "llama3-tiktoken": "tiktoken"}


def repository_readme(built: Artifacts, models: dict[str, str], engine: dict | None) -> str:
    lines = [f"# Triton model repository for {built.folder.name}", "",
             (f"Written by llama-export from {built.folder} ({built.manifest.get('size') or 'checkpoint'}, "
             f"{built.precision})."), "", "| model | backend | what |", "|---|---|---|",
             f"| {models['onnx']} | onnxruntime | KV-cache graph (prefill + decode), batch explicit |",
             f"| {models['generate']} | python (decoupled) | text in, streamed tokens out (gRPC); ONNX Runtime |",
             f"| {models['complete']} | python | the same, one response per request (HTTP or gRPC) |"]
    if engine:
        lines += [f"| {models['plan']} | tensorrt_plan | the engine, profiles {', '.join(engine['profiles'])} |",
                  (f"| {models['generate_trt']} | python (decoupled) | text in, streamed tokens; BLS to "
                  f"{models['plan']} |")]
    lines += ["", "CPU only (no TensorRT backend needed):", "",
              (f"    tritonserver --model-repository REPO --model-control-mode explicit --load-model {models['generate']} "
              f"--load-model {models['complete']}"),
              "", _python_packages(built), ""]
    if engine:
        requirement = configs.tensorrt_requirement(engine)
        lines += [(f"TensorRT: the engine was built by {requirement} and only loads with that exact version "
                  f"(config parameter `{protocol.PARAM_TENSORRT_VERSION}`)."),
                  container_advice(engine["builder"], engine["builder_version"]), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _python_packages(built: Artifacts) -> str:
    kind = (built.manifest.get("tokenizer") or {}).get("kind")
    tokenizer = TOKENIZER_PACKAGES.get(kind, "sentencepiece")
    return (f"The front ends' Python (the interpreter the python backend stub runs) needs `numpy<2`, `onnxruntime`, "
            f"`{tokenizer}` (this model's {kind or 'sentencepiece'} tokenizer) and `jinja2>=3.1.6` (requests with "
            f"`{protocol.CHAT}` set render the chat template).")


__all__ = [
    "MODEL_MARKER",
    "VENDORED_MODULES",
    "Repository",
    "check_model_name",
    "check_repository",
    "kv_dtype_of",
    "model_base_name",
    "repository_readme",
    "vendor_package",
    "write_repository",
]
