"""Varied test strings from a seeded generator: code, prose, unicode, emoji, whitespace runs, special-token text,
empty and very long. Nothing is hard-coded but the character pools; the seed makes every run the same."""

from __future__ import annotations

import random

from llama_export.assets.corpus import corpus

UNICODE_BLOCKS = [(0x00A0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0590, 0x05FF), (0x0600, 0x06FF),
                  (0x0900, 0x097F), (0x0E00, 0x0E7F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x20A0, 0x20CF),
                  (0x2190, 0x22FF), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF00, 0xFFEF),
                  (0x0300, 0x036F)]  # the last: combining marks
EMOJI = ["😀", "🎉", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🧪", "🐍", "✨", "🤖", "🫠", "1️⃣"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\n\n\n", "\u00a0", "\u3000", "\u2009", "\v", "\f", " \n ", "\t\t  "]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't"]


def _unicode_char(rng: random.Random) -> str:
    lo, hi = rng.choice(UNICODE_BLOCKS)
    return chr(rng.randint(lo, hi))


def varied_strings(n: int = 1200, seed: int = 0, specials: list[str] = (), long_chars: int = 20_000) -> list[str]:
    """`n` strings; `specials` are special-token texts of the tokenizer under test, mixed into some strings."""
    rng = random.Random(seed)
    train, heldout = corpus()
    text = train + heldout

    def snippet(max_len: int = 200) -> str:
        start = rng.randrange(len(text) - max_len)
        return text[start:start + rng.randint(0, max_len)]

    def piece() -> str:
        kind = rng.randrange(9)
        if kind == 0:
            return snippet()
        if kind == 1:
            return "".join(_unicode_char(rng) for _ in range(rng.randint(1, 12)))
        if kind == 2:
            return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
        if kind == 3:
            return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 6)))
        if kind == 4:
            return str(rng.randint(0, 10 ** rng.randint(1, 12)))
        if kind == 5:
            return rng.choice(CONTRACTIONS)
        if kind == 6 and specials:
            return rng.choice(specials)
        if kind == 7:
            return "".join(chr(rng.randint(0x21, 0x7E)) for _ in range(rng.randint(1, 10)))  # punctuation soup
        return rng.choice(["def f(x):\n    return x ** 2\n", "if (a && b) { c++; }", "SELECT * FROM t;", "x = [1, 2]"])

    strings = ["", " ", "\n", "  \t\n  "]
    strings += ["".join(piece() for _ in range(rng.randint(1, 8))) for _ in range(n - 8)]
    strings += [snippet(long_chars) * 1 + "".join(piece() for _ in range(50)) for _ in range(2)]
    strings += [" " * rng.randint(100, 3000), "".join(rng.choice(EMOJI) for _ in range(2000))]
    return strings[:n]
