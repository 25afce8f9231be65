"""Meta's Llama 3 `tokenizer.model`: a tiktoken ranks file (one "base64-token rank" per line), not SentencePiece.

Built as Meta's reference tokenizer (llama-models, llama3/tokenizer.py) builds it: the file's ranks, Llama 3's split
pattern, and 256 special tokens numbered after the ranks (<|begin_of_text|> is 128000 in the real file). Two choices
follow transformers rather than Meta's reference, so every kind reads a prompt alike: special-token text in a prompt
(<|eot_id|> in a rendered chat template) is that special token, and decode leaves special tokens out.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from ...errors import UserError
from .base import Tokenizer

PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
NUM_RESERVED_SPECIAL_TOKENS = 256
NAMED_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                 "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")
SPECIAL_TOKENS = NAMED_SPECIAL + tuple(f"<|reserved_special_token_{2 + i}|>"
                                       for i in range(NUM_RESERVED_SPECIAL_TOKENS - len(NAMED_SPECIAL)))
# Meta's reference stops at <|eom_id|> and <|eot_id|> (chat) besides <|end_of_text|> (the tokenizer's EOS): the
# same three ids Llama 3.1's generation_config.json lists.
STOP_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
# tiktoken's own limits, as Meta's reference applies them: longer inputs are cut before encoding.
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000


def read_ranks(path: Path) -> dict[bytes, int] | None:
    """The ranks of a tiktoken file, or None when `path` is not one (a SentencePiece protobuf, say)."""
    ranks: dict[bytes, int] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error):
        return None
    return ranks or None


def is_tiktoken_file(path: Path) -> bool:
    """Detect by content: the first line of a ranks file is base64 and an integer (SentencePiece is binary)."""
    with open(path, "rb") as f:
        first = f.readline(1024)
    try:
        token, rank = first.split()
        base64.b64decode(token, validate=True)
        int(rank)
    except (ValueError, binascii.Error):
        return False
    return True


class Llama3Tokenizer(Tokenizer):
    kind = "llama3-tiktoken"

    def __init__(self, folder: Path, main_file: str = "tokenizer.model"):
        import tiktoken

        super().__init__(folder, main_file)
        ranks = read_ranks(self.path)
        if ranks is None:
            raise UserError(f"{self.path}: not a tiktoken ranks file (a line is not 'base64-token rank')")
        self.special = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
        self.model = tiktoken.Encoding(name=self.path.name, pat_str=PATTERN, mergeable_ranks=ranks,
                                       special_tokens=self.special)
        self.n_words = len(ranks) + len(SPECIAL_TOKENS)
        self.bos_id, self.eos_id = self.special["<|begin_of_text|>"], self.special["<|end_of_text|>"]
        self._special_ids = frozenset(self.special.values())

    @property
    def vocab_size(self) -> int:
        return self.n_words

    @property
    def stop_ids(self) -> frozenset[int]:
        return super().stop_ids | {self.special[token] for token in STOP_TOKENS}

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = [self.bos_id] if bos else []
        for start in range(0, len(text), MAX_ENCODE_CHARS):
            for piece in _split_long_runs(text[start:start + MAX_ENCODE_CHARS], MAX_RUN_CHARS):
                ids += self.model.encode(piece, allowed_special="all")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.model.decode([i for i in ids if i not in self._special_ids])

    def token_text(self, token_id: int) -> str:
        return self.model.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")


def _split_long_runs(text: str, max_run: int):
    """Meta's _split_whitespaces_or_nonwhitespaces: cut runs of only-whitespace or only-non-whitespace characters
    longer than `max_run` (tiktoken's regex is slow on them)."""
    run, start, whitespace = 0, 0, text[:1].isspace()
    for i, char in enumerate(text):
        if char.isspace() != whitespace:
            run, whitespace = 1, char.isspace()
        else:
            run += 1
            if run > max_run:
                yield text[start:i]
                start, run = i, 1
    yield text[start:]
