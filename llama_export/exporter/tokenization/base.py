"""The tokenizer interface every command uses, and what it reads from the files next to a tokenizer.

A checkpoint folder ships its tokenizer as one main file (tokenizer.model or tokenizer.json) plus companions that
change what the tokenizer does: tokenizer_config.json (BOS/EOS handling, the chat template, the named special
tokens), special_tokens_map.json (older folders), chat_template.jinja (how transformers >= 4.43 saves templates) and
generation_config.json (the ids that end a turn). The companions travel with the main file into every output folder,
so a reader builds the same tokenizer wherever it opens one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...errors import UserError

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG = "generation_config.json"
COMPANION_FILES = (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE, GENERATION_CONFIG)
# transformers' SPECIAL_TOKENS_ATTRIBUTES: the names a chat template sees (bos_token, eos_token, ...)
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def read_json(path: Path) -> dict:
    """A JSON object from a companion file; {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def token_content(value) -> str | None:
    """A named special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """encode/decode plus BOS, EOS, stop ids and chat template; subclasses implement one file format each."""

    kind = ""  # the name recorded in manifest.json

    def __init__(self, folder: Path, main_file: str):
        self.folder, self.main_file = Path(folder), main_file
        self.path = self.folder / main_file
        self.config = read_json(self.folder / TOKENIZER_CONFIG)
        self.generation_config = read_json(self.folder / GENERATION_CONFIG)
        self.bos_id: int | None = None
        self.eos_id: int | None = None

    # --- implemented by each kind -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of `text`. bos=True adds what the tokenizer adds around a text (BOS for Llama, as transformers'
        add_special_tokens=True); bos=False adds nothing (a rendered chat prompt already holds its BOS)."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` without special tokens (transformers' decode(ids, skip_special_tokens=True))."""
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------------------------
    def prompt_ids(self, text: str, chat: bool = False) -> list[int]:
        """What generation starts from: `text` with BOS, or with chat=True `text` as a user message in the chat
        template, tokenized as transformers' apply_chat_template(..., add_generation_prompt=True) tokenizes it
        (no added BOS: the template writes its own)."""
        if not chat:
            return self.encode(text)
        from .chat import render_chat

        return self.encode(render_chat(self, [{"role": "user", "content": text}]), bos=False)

    @property
    def files(self) -> tuple[str, ...]:
        """The files this tokenizer was built from, relative to its folder: what an output folder must carry."""
        return (self.main_file, *(name for name in COMPANION_FILES if (self.folder / name).is_file()))

    def manifest(self) -> dict:
        return {"kind": self.kind, "files": list(self.files)}

    def copy_to(self, target: Path) -> None:
        for name in self.files:
            shutil.copyfile(self.folder / name, Path(target) / name)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation: generation_config.json's eos_token_id (an int or a list) and the tokenizer's EOS."""
        configured = self.generation_config.get("eos_token_id")
        listed = configured if isinstance(configured, list) else [] if configured is None else [configured]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in listed):
            raise UserError(f"{self.folder / GENERATION_CONFIG}: eos_token_id must be a token id or a list of them, "
                            f"not {configured!r}")
        return frozenset(listed) | ({self.eos_id} if self.eos_id is not None else set())

    def named_tokens(self) -> dict[str, str]:
        """bos_token, eos_token, ... as strings: what transformers passes to a chat template (special_tokens_map)."""
        named = {key: token_content(self.config.get(key)) for key in NAMED_SPECIAL_TOKENS}
        if "added_tokens_decoder" not in self.config:  # transformers' legacy path merges special_tokens_map.json
            legacy = read_json(self.folder / SPECIAL_TOKENS_MAP)
            named |= {key: token_content(legacy[key]) for key in NAMED_SPECIAL_TOKENS if key in legacy}
        for key, token_id in (("bos_token", self.bos_id), ("eos_token", self.eos_id)):
            if named.get(key) is None and token_id is not None:
                named[key] = self.token_text(token_id)
        return {key: value for key, value in named.items() if value is not None}

    @property
    def chat_template(self) -> str | None:
        """chat_template.jinja when present (transformers prefers it), else tokenizer_config.json's chat_template
        (a string, or a list of named templates of which "default" is used)."""
        template_file = self.folder / CHAT_TEMPLATE_FILE
        if template_file.is_file():
            return template_file.read_text(encoding="utf-8")
        template = self.config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            if "default" not in named:
                raise UserError(f"{self.folder / TOKENIZER_CONFIG} has chat templates {sorted(map(str, named))} "
                                "but none named 'default'")
            template = named["default"]
        return template if isinstance(template, str) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path})"
