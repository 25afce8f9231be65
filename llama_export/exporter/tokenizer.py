"""SentencePiece tokenizer (LLaMA 1/2 and the built-in tiny model)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


class Tokenizer:
    def __init__(self, path: Path):
        import sentencepiece as spm

        self.path = Path(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise UserError(f"{self.path}: not a SentencePiece tokenizer model ({exc})") from None
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id, *ids] if bos and self.bos_id >= 0 else ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


def find_tokenizer(folder: Path) -> Path | None:
    candidate = Path(folder) / "tokenizer.model"
    return candidate if candidate.is_file() else None
