"""Turn the CLI's model options (--size / --checkpoint / --random-init / --seed) into a Checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..config import get_size
from ..errors import UserError
from .checkpoints import Checkpoint, RandomCheckpoint

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
