"""The output folder (`--out DIR`): interrupt-safe staging, manifest.json, and reading a built folder back.

A build writes into a temporary sibling `.DIR.tmp-XXXX` and renames it into place only when everything is
written, so an interrupted build never leaves a DIR that looks complete (a previous DIR stays intact until the
final rename). manifest.json is deterministic: sorted keys, no timestamps, so identical inputs give identical
bytes. Later stages (build, validate, triton) reuse `staged_output`, `write_manifest` and `load_manifest`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..config import ModelArgs
from ..errors import UserError
from .checkpoints import file_sha256

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir")
_DISTRIBUTIONS = {"onnx_ir": "onnx-ir"}


@contextlib.contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `out_dir`, on any exception (KeyboardInterrupt
    included) it is removed and `out_dir` is left as it was."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder; choose another path")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield staging
        _replace_dir(staging, out_dir)
    except BaseException:
        _remove_ignoring_interrupts(staging)
        raise


def _remove_ignoring_interrupts(path: Path) -> None:
    """A second Ctrl-C must not stop the cleanup halfway (signal handlers can only be set in the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        shutil.rmtree(path, ignore_errors=True)
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _replace_dir(new: Path, target: Path) -> None:
    """Two renames: the old DIR moves aside, the new one moves in; no moment has a half-written DIR."""
    new.chmod(0o755)  # mkdtemp makes it 0700
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(_DISTRIBUTIONS.get(name, name))
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def tool_info() -> dict:
    return {"name": "llama-export", "version": metadata.version("llama-export"),
            "python": platform.python_version()}


# Views written after the model, each with its own index: report/ holds timings (not reproducible) and
# triton/ holds copies of model files already hashed here.
DERIVED_FOLDERS = ("report", "triton")


# sha256 of files this process wrote or hashed, keyed by what identifies a file's content without reading it
# (device, inode, size, mtime_ns; the key survives the staging folder's rename). The weight stream hashes
# model.onnx.data while writing it, so a 13 GB manifest entry costs no second read, and `build` rewriting the
# manifest after each stage rehashes nothing. Any write changes size or mtime, so a stale entry never matches.
_SHA256_BY_IDENTITY: dict[tuple[int, int, int, int], str] = {}


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_sha256(path: Path, digest: str) -> None:
    """Record the sha256 of a file just written and closed (its bytes were hashed on the way out)."""
    _SHA256_BY_IDENTITY[_identity(Path(path))] = digest


def sha256_of(path: Path) -> str:
    key = _identity(Path(path))
    if key not in _SHA256_BY_IDENTITY:
        _SHA256_BY_IDENTITY[key] = file_sha256(path)
    return _SHA256_BY_IDENTITY[key]


def file_entries(folder: Path) -> dict[str, dict]:
    """Every file under `folder` except the manifest and DERIVED_FOLDERS: relative path -> sha256 and size."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST and rel.split("/")[0] not in DERIVED_FOLDERS:
            entries[rel] = {"sha256": sha256_of(path), "size": path.stat().st_size}
    return entries


def write_manifest(folder: Path, content: dict) -> Path:
    """manifest.json = `content` + the file list; sorted keys and no timestamps so it is reproducible."""
    manifest = {**content, "files": file_entries(folder)}
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"  # a later stage may rewrite it in place: never half-written
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Artifacts:
    """A built output folder as later stages see it."""

    folder: Path
    manifest: dict
    args: ModelArgs
    precision: str
    model_path: Path
    tokenizer_path: Path | None


def load_manifest(folder: str | Path) -> Artifacts:
    """Read DIR/manifest.json; a missing or foreign folder is a UserError saying what to do."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a llama-export output folder (no {MANIFEST}); create one with "
                        "llama-export export --out DIR")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        args = ModelArgs.from_dict(manifest["args"])
        model_path = folder / manifest["model"]
        precision = manifest["precision"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {exc}); rebuild {folder}") from None
    if not model_path.is_file():
        raise UserError(f"{model_path} is missing; rebuild {folder}")
    tokenizer = folder / TOKENIZER
    return Artifacts(folder, manifest, args, precision, model_path, tokenizer if tokenizer.is_file() else None)


__all__ = ["MANIFEST", "TOKENIZER", "Artifacts", "file_entries", "library_versions", "load_manifest",
           "remember_sha256", "sha256_of", "staged_output", "tool_info", "write_manifest"]
