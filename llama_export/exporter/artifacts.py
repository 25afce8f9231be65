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
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..config import ModelArgs
from ..errors import UserError
from .checkpoints import file_sha256

MANIFEST = "manifest.json"
TOOL_NAME = "llama-export"  # manifest["tool"]["name"]: the mark of a folder this tool may replace
LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir")
_DISTRIBUTIONS = {"onnx_ir": "onnx-ir"}


# Staging and set-aside siblings carry the writer's PID (`.DIR.tmp-PID-XXXX`, `.DIR.old-PID-XXXX`), so a later
# run can tell a leftover of a killed run (its process is gone) from a run still writing.
_SIBLING = r"^\.{name}\.(tmp|old)-(\d+)-"
_LIVE_SIBLINGS: set[Path] = set()  # this process's own staging folders (a PID may be reused, ours is alive)


def notice(message: str) -> None:
    """One line to stderr for things the user should know that are not errors (leftovers removed)."""
    print(f"note: {' '.join(message.split())}", file=sys.stderr, flush=True)


def is_own_output(folder: Path, marker: str = MANIFEST) -> bool:
    """True when `folder` is a llama-export output (its `marker` JSON file names the tool) or an empty folder."""
    folder = Path(folder)
    try:
        if not any(folder.iterdir()):
            return True
        manifest = json.loads((folder / marker).read_text(encoding="utf-8"))
        return manifest["tool"]["name"] == TOOL_NAME
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_replaceable(out_dir: str | Path, *, force: bool = False, protect: Iterable[str | Path | None] = (),
                      option: str = "--out", marker: str = MANIFEST) -> Path:
    """Refuse, before any work, an output folder whose replacement would delete what this tool did not write.

    Never (even with --force): the current directory or a folder holding it, the home folder, a protected path
    (the checkpoint, the source export) or a folder holding one, a mount point (the finished folder is renamed
    into place, which a mount point cannot be). Without --force: an existing folder that is not empty and not a
    llama-export output (`marker`: the JSON file naming the tool). Returns the absolute path."""
    if str(out_dir).strip() == "":
        raise UserError(f"{option} is empty (an unset shell variable?); name the folder to write")
    out = Path(out_dir).absolute()
    real = out.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if real == cwd or real in cwd.parents:
        raise UserError(f"{option} {out_dir} is the current directory or holds it; name a new folder instead")
    if real == home or real in home.parents:
        raise UserError(f"{option} {out_dir} is your home folder or holds it; name a new folder instead")
    for path in protect:
        if path is None:
            continue
        kept = Path(path).resolve()
        if real == kept or real in kept.parents:
            raise UserError(f"{option} {out_dir} would replace {kept}, which this command reads; "
                            "name a new folder instead")
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a folder; choose another path")
    if out.is_dir() and os.path.ismount(out):
        raise UserError(f"{option} {out} is a mount point, which cannot be replaced by a rename; "
                        f"write into a folder inside it ({out}/NAME)")
    if out.is_dir() and not force and not is_own_output(out, marker):
        raise UserError(f"{option} {out} exists and is not a llama-export output (no {marker} written by "
                        "llama-export); choose a new folder, or pass --force to replace it")
    return out


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_siblings(out_dir: str | Path, option: str = "--out") -> int:
    """Remove `.DIR.tmp-*` / `.DIR.old-*` left by a killed run into `out_dir` (their PID is no longer alive) and
    say so in one line; returns how many. A set-aside `.DIR.old-*` whose DIR is gone (killed between the two
    renames) is moved back rather than deleted. Refuses when a live process is still writing `out_dir`."""
    out = Path(out_dir).absolute()
    if not out.parent.is_dir():
        return 0
    pattern = re.compile(_SIBLING.format(name=re.escape(out.name)))
    removed = 0
    for sibling in sorted(out.parent.iterdir()):
        match = pattern.match(sibling.name)
        if not match or sibling in _LIVE_SIBLINGS:
            continue
        kind, pid = match.group(1), int(match.group(2))
        if pid != os.getpid() and _process_alive(pid):
            raise UserError(f"another process (PID {pid}) is writing {option} {out} ({sibling.name}); wait for it "
                            "or choose another folder")
        if kind == "old" and (sibling / out.name).is_dir() and not out.exists():
            os.replace(sibling / out.name, out)  # the previous DIR, set aside when the run was killed
        _remove_ignoring_interrupts(sibling)
        removed += 1
    if removed:
        notice(f"removed {removed} leftover staging folder(s) of an interrupted run next to {out}")
    return removed


def _sibling(target: Path, kind: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-{os.getpid()}-", dir=target.parent))
    _LIVE_SIBLINGS.add(path)
    return path


@contextlib.contextmanager
def staged_output(out_dir: str | Path, *, force: bool = False, protect: Iterable[str | Path | None] = (),
                  option: str = "--out", marker: str = MANIFEST) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `out_dir`, on any exception (KeyboardInterrupt
    and SIGTERM included) it is removed and `out_dir` is left as it was.

    Before anything is written: `check_replaceable` (what may be replaced; `force`, `protect`) and
    `clean_stale_siblings` (leftovers of a killed run)."""
    out_dir = check_replaceable(out_dir, force=force, protect=protect, option=option, marker=marker)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(out_dir, option)
    staging = _sibling(out_dir, "tmp")
    try:
        yield staging
        _replace_dir(staging, out_dir)
    except BaseException:
        _remove_ignoring_interrupts(staging)
        raise
    finally:
        _LIVE_SIBLINGS.discard(staging)


def _remove_ignoring_interrupts(path: Path) -> None:
    """A second Ctrl-C or SIGTERM must not stop the cleanup halfway (handlers can only be set in the main
    thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        shutil.rmtree(path, ignore_errors=True)
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _replace_dir(new: Path, target: Path) -> None:
    """Two renames: the old DIR moves aside, the new one moves in; no moment has a half-written DIR."""
    new.chmod(0o755)  # mkdtemp makes it 0700
    if not target.exists():
        os.replace(new, target)
        return
    old = _sibling(target, "old")
    try:
        os.replace(target, old / target.name)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old / target.name, target)  # the previous DIR goes back where it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if old.exists():
            _remove_ignoring_interrupts(old)
        _LIVE_SIBLINGS.discard(old)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(_DISTRIBUTIONS.get(name, name))
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def tool_info() -> dict:
    return {"name": TOOL_NAME, "version": metadata.version("llama-export"),
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

    def tokenizer(self):
        """The folder's tokenizer (exporter.tokenization.Tokenizer) as manifest.json records it (kind + files), or
        None when the folder has none."""
        from .tokenization import find_tokenizer, load_tokenizer

        recorded = self.manifest.get("tokenizer")
        if recorded is None:  # written before manifests named the tokenizer: detect it as in a checkpoint folder
            return find_tokenizer(self.folder)
        missing = [name for name in recorded.get("files", []) if not (self.folder / name).is_file()]
        if missing:
            raise UserError(f"{self.folder} lacks tokenizer file(s) {', '.join(missing)} that its manifest lists; "
                            f"rebuild {self.folder}")
        return load_tokenizer(self.folder, recorded.get("kind"))


def load_manifest(folder: str | Path, verify_hashes: bool = False) -> Artifacts:
    """Read DIR/manifest.json and check DIR against it before anything uses it: every listed file is present
    with its recorded size, and with its sha256 when `verify_hashes` (verify_files); the graph's real precision
    and fusion target are the manifest's (check_graph). A missing, foreign or damaged folder is a UserError."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a llama-export output folder (no {MANIFEST}); create one with "
                        "llama-export export --out DIR")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        args = ModelArgs.from_dict(manifest["args"])
        model_path = _inside(folder, manifest["model"])
        precision = manifest["precision"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {exc}); rebuild {folder}") from None
    if not model_path.is_file():
        raise UserError(f"{model_path} is missing; rebuild {folder}")
    verify_files(folder, manifest, verify_hashes)
    built = Artifacts(folder, manifest, args, precision, model_path)
    from .graph_check import check_graph

    check_graph(built)
    return built


def _inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing a manifest entry that points outside the folder."""
    if not isinstance(relative, str) or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise ValueError(f"{relative!r} is not a path inside the folder")
    return folder / relative


def verify_files(folder: str | Path, manifest: dict, hashes: bool = False) -> None:
    """Every file manifest.json lists must exist with its recorded size (always: a stat per file) and sha256
    (when `hashes`: reads every byte). A mismatch is a UserError naming the file."""
    folder = Path(folder)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise UserError(f"{folder / MANIFEST} lists no files (damaged or hand-edited); rebuild {folder}")
    redo = f"the file is damaged or was changed after the build; rebuild {folder}"
    for relative, entry in sorted(files.items()):
        try:
            path = _inside(folder, relative)
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{folder / MANIFEST} has a damaged entry for {relative!r} ({exc}); rebuild "
                            f"{folder}") from None
        if not path.is_file():
            raise UserError(f"{path} is missing (manifest.json lists it); rebuild {folder}")
        if path.stat().st_size != size:
            raise UserError(f"{path} has {path.stat().st_size} bytes but manifest.json records {size}; {redo}")
        if hashes and sha256_of(path) != digest:
            raise UserError(f"{path} does not match its sha256 in manifest.json; {redo} (--no-verify skips "
                            "this check)")


def check_writable(folder: str | Path, why: str) -> None:
    """Fail before the work (not after it) when `folder` cannot take the files the command will write."""
    folder = Path(folder)
    try:
        probe = Path(tempfile.mkdtemp(prefix=".write-probe-", dir=folder))
        probe.rmdir()
    except OSError as exc:
        raise UserError(f"{folder} is not writable ({exc.strerror}); {why}") from None


__all__ = ["MANIFEST", "TOOL_NAME", "Artifacts", "check_replaceable", "check_writable",
           "clean_stale_siblings", "file_entries", "is_own_output", "library_versions", "load_manifest",
           "notice", "remember_sha256", "sha256_of", "staged_output", "tool_info", "verify_files", "write_manifest"]
