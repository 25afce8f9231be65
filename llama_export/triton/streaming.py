"""Token ids → text deltas for streaming, with stop strings.

SentencePiece pieces only read right in context, so the whole continuation is decoded each time and only the new
suffix is emitted. Text that could still become a stop string is held back until it cannot, and so is a trailing
U+FFFD: a character whose UTF-8 bytes span several tokens (byte-level BPE, byte fallback) decodes to it until its
last byte arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStreamer:
    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int], stop: Sequence[str] = ()):
        self._decode = decode
        self._context = list(prompt_ids)  # decoded together with the new ids so the first piece's spacing is right
        self._prefix = decode(self._context)
        self._stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = ""  # text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one generated token; return the text that is now final (possibly empty)."""
        self.ids.append(token)
        text = self._decode(self._context + self.ids)[len(self._prefix):]
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._advance(text[:cut])
        incomplete = len(text) - len(text.rstrip("\ufffd"))
        return self._advance(text[: len(text) - max(self._held_back(text), incomplete)])

    def finish(self) -> str:
        """The end of generation: release any held-back text (it did not become a stop string)."""
        if self.stopped:
            return ""
        text = self._decode(self._context + self.ids)[len(self._prefix):]
        return self._advance(text)

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def _advance(self, final: str) -> str:
        if not final.startswith(self.emitted):  # a decode that rewrote earlier text: emit nothing new
            return ""
        delta, self.emitted = final[len(self.emitted):], final
        return delta
