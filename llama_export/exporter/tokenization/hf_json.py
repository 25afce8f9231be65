"""Hugging Face `tokenizer.json` through the `tokenizers` library, set up as transformers (5.x) sets it up.

transformers takes tokenizer.json as written, with two exceptions that change the ids, both reproduced here:
- BOS/EOS: when tokenizer_config.json names add_bos_token or add_eos_token (or the file has no post-processor), the
  post-processor becomes the template "<bos> $A <eos>" with those flags (TokenizersBackend.update_post_processor).
- tokenizer_class LlamaTokenizer(Fast) (Llama 1/2 folders): the pipeline is rebuilt in code from the file's vocabulary
  and merges: no normalizer, a Metaspace pre-tokenizer ("▁" prepended to the first segment only, or to every
  segment when tokenizer_config.json says legacy: true), and SentencePiece's decoder.
Decoding skips special tokens; transformers' clean_up_tokenization_spaces is ignored for BPE models (all Llama
tokenizers are BPE), so it is not applied either.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from .base import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")


class HfTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, folder: Path, main_file: str = TOKENIZER_JSON):
        from tokenizers import Tokenizer as Backend

        super().__init__(folder, main_file)
        try:
            self.backend = Backend.from_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception for a malformed file
            raise UserError(f"{self.path}: not a Hugging Face tokenizer.json ({exc})") from None
        self.backend.no_padding()
        self.backend.no_truncation()
        named = self.named_tokens()
        self.bos_id = self._id_of(named.get("bos_token"))
        self.eos_id = self._id_of(named.get("eos_token"))
        if self.config.get("tokenizer_class") in LLAMA_CLASSES:
            self._llama_pipeline()
        if "add_bos_token" in self.config or "add_eos_token" in self.config or self.backend.post_processor is None:
            self._bos_eos_template(self.config.get("add_bos_token") is True, self.config.get("add_eos_token") is True)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def _bos_eos_template(self, add_bos: bool, add_eos: bool) -> None:
        from tokenizers import processors

        add_bos, add_eos = add_bos and self.bos_id is not None, add_eos and self.eos_id is not None
        named = self.named_tokens()
        bos, eos = named.get("bos_token"), named.get("eos_token")
        single = f"{f'{bos}:0 ' if add_bos else ''}$A:0{f' {eos}:0' if add_eos else ''}"
        pair = f"{single}{f' {bos}:1' if add_bos else ''} $B:1{f' {eos}:1' if add_eos else ''}"
        special = ([(bos, self.bos_id)] if add_bos else []) + ([(eos, self.eos_id)] if add_eos else [])
        self.backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    def _llama_pipeline(self) -> None:
        from tokenizers import decoders, pre_tokenizers

        add_prefix_space = self.config.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
        scheme = ("always" if self.config.get("legacy") else "first") if add_prefix_space else "never"
        self.backend.normalizer = None
        self.backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            steps.append(decoders.Strip(content=" ", left=1))
        self.backend.decoder = decoders.Sequence(steps)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=bos).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self.backend.id_to_token(token_id)
