"""Which tokenizer a folder holds, and loading it.

Order when a folder has several (Hugging Face Llama 2 folders ship tokenizer.model and tokenizer.json):
tokenizer.json wins, as in transformers' AutoTokenizer, which loads the fast tokenizer when there is one. Otherwise
tokenizer.model is read by content: a tiktoken ranks file (Meta's Llama 3) or else SentencePiece (LLaMA 1/2).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from .base import Tokenizer
from .hf_json import TOKENIZER_JSON, HfTokenizer
from .llama3_tiktoken import Llama3Tokenizer, is_tiktoken_file
from .sentencepiece_model import SentencePieceTokenizer

TOKENIZER_MODEL = "tokenizer.model"
KINDS: dict[str, type[Tokenizer]] = {kind.kind: kind for kind in (SentencePieceTokenizer, HfTokenizer,
                                                                   Llama3Tokenizer)}


def detect(path: str | Path) -> tuple[type[Tokenizer], Path, str] | None:
    """(kind, folder, main file name) for a folder or a tokenizer file; None when a folder has no tokenizer."""
    path = Path(path)
    if path.is_file():
        folder, candidates = path.parent, [path.name]
    elif path.is_dir():
        folder, candidates = path, [TOKENIZER_JSON, TOKENIZER_MODEL]
    else:
        raise UserError(f"tokenizer {path} does not exist")
    for name in candidates:
        main = folder / name
        if not main.is_file():
            continue
        if name.endswith(".json"):
            return HfTokenizer, folder, name
        return (Llama3Tokenizer if is_tiktoken_file(main) else SentencePieceTokenizer), folder, name
    return None


def find_tokenizer(path: str | Path) -> Tokenizer | None:
    """The tokenizer of a checkpoint or output folder (or a tokenizer file), None when there is none."""
    found = detect(path)
    return None if found is None else found[0](found[1], found[2])


def load_tokenizer(path: str | Path, expected_kind: str | None = None) -> Tokenizer:
    """Like find_tokenizer, but a missing tokenizer is an error; `expected_kind` (from a manifest) must match."""
    tokenizer = find_tokenizer(path)
    if tokenizer is None:
        raise UserError(f"{path} has no tokenizer ({TOKENIZER_JSON} or {TOKENIZER_MODEL})")
    if expected_kind is not None and tokenizer.kind != expected_kind:
        raise UserError(f"{path} holds a {tokenizer.kind} tokenizer but its manifest says {expected_kind}; "
                        "rebuild the folder")
    return tokenizer
