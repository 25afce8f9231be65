"""SentencePiece `tokenizer.model` (LLaMA 1/2, Meta's Llama 2 folders, the built-in tiny model).

Encodes as Meta's reference Llama 2 tokenizer does (SentencePiece's own encode, BOS in front), with one addition:
control-token text in a prompt (`<s>`, `</s>` written by a chat template) becomes that token, and each text segment
between them is encoded on its own, as Meta's chat code encodes each turn (so "[INST]" after `<s>` keeps its
leading "▁"). transformers 5 has no SentencePiece Llama tokenizer any more: it converts tokenizer.model to a
`tokenizers` pipeline whose whitespace handling differs from SentencePiece's, so Meta's logic is the reference here.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import UserError
from .base import Tokenizer


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, folder: Path, main_file: str = "tokenizer.model"):
        import sentencepiece as spm

        super().__init__(folder, main_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise UserError(f"{self.path}: not a SentencePiece tokenizer model ({exc})") from None
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.add_bos = self.config.get("add_bos_token", True) is not False
        self.add_eos = self.config.get("add_eos_token", False) is True
        # Control pieces (<s>, </s>, <unk>) written as text are those tokens; SentencePiece alone would spell them out.
        self._special = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())
                         if self.sp.is_control(i) or self.sp.is_unknown(i)}
        alternatives = "|".join(map(re.escape, sorted(self._special, key=len, reverse=True)))
        self._split = re.compile(f"({alternatives})" if alternatives else r"(?!)")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self._special[part])
            elif part or i == 0:
                ids += self.sp.encode(part)
        head = [self.bos_id] if bos and self.add_bos and self.bos_id is not None else []
        tail = [self.eos_id] if bos and self.add_eos and self.eos_id is not None else []
        return head + ids + tail

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))  # control tokens decode to nothing

    def token_text(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)
