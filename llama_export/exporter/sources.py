"""Turn the CLI's model options (--size / --checkpoint / --random-init / --seed) into a Checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..config import ModelArgs, get_size
from ..errors import UserError
from .checkpoints import Checkpoint
from .random_init import RandomCheckpoint

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_ASSET = ASSETS / "tiny"


def resolve_checkpoint(size: str | None = None, checkpoint: str | Path | None = None,
                       random_init: bool = False, seed: int = 0) -> Checkpoint:
    """`--checkpoint PATH` loads it; `--size tiny` is the trained asset unless --random-init; any other size
    has random weights (seeded); nothing at all means the tiny asset."""
    from .checkpoints import open_checkpoint

    if checkpoint is not None and size is not None:
        raise UserError("give either --size or --checkpoint, not both")
    if checkpoint is not None:
        if random_init:
            raise UserError("--random-init applies to --size, not to --checkpoint")
        return open_checkpoint(Path(checkpoint))
    size = size or "tiny"
    try:
        args = get_size(size)
    except KeyError as exc:
        raise UserError(f"{exc.args[0]} (llama-export sizes lists them)") from None
    if size.lower() == "tiny" and not random_init:
        return open_checkpoint(TINY_ASSET)
    return RandomCheckpoint(args, seed)


# The checkpoint classes each `format` in a manifest record names (Checkpoint.source).
FOLDER_FORMATS = {"hf": "HFCheckpoint", "meta": "MetaCheckpoint", "own": "SafetensorsCheckpoint"}


def reopen_source(record: dict, args: ModelArgs, exported: str | Path = "the folder") -> Checkpoint:
    """The checkpoint a manifest's `checkpoint` record names (format, path / size, seed), opened the way it was
    opened at export. Only the fields are read: `description` is for display and never parsed."""
    from . import checkpoints

    kind = record.get("format")
    hint = "pass --checkpoint PATH to the weights it was exported from"
    if kind == "random":
        return RandomCheckpoint(args, int(record["seed"]))
    if kind == "builtin":
        return checkpoints.open_checkpoint(TINY_ASSET)
    if kind not in FOLDER_FORMATS:
        shown = f"format {kind!r}" if kind else "no source format (an older llama-export wrote it)"
        raise UserError(f"{exported} records {shown} for its checkpoint; {hint}, or export it again")
    path = Path(record.get("path", ""))
    if not path.is_dir():
        raise UserError(f"{exported} was exported from {path}, which is not available here; {hint}")
    ckpt = checkpoints.open_checkpoint(path)
    if type(ckpt).__name__ != FOLDER_FORMATS[kind]:
        raise UserError(f"{path} no longer holds a {kind} checkpoint (it was exported from one); {hint}")
    return ckpt
