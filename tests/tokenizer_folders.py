"""Tokenizer folders of every kind real checkpoints ship, built locally in miniature (nothing is downloaded).

- `meta_llama2_tokenizer`: SentencePiece tokenizer.model only (the tiny asset's: BPE, byte fallback, Llama settings).
- `hf_llama2_tokenizer`: tokenizer.model + tokenizer.json (transformers' own conversion of it) + tokenizer_config.json
  (LlamaTokenizer, add_bos_token, a Llama 2 chat template) + generation_config.json.
- `hf_llama3_tokenizer`: tokenizer.json only (a byte-level BPE trained here, Llama 3's split pattern and 256 special
  tokens after the vocabulary) + tokenizer_config.json (Llama 3 chat template) + generation_config.json (eos list).
- `meta_llama3_tokenizer`: that BPE as a tiktoken ranks file named tokenizer.model (Meta's Llama 3 format).
Special-token lists and the split pattern are written out here from Meta's and Hugging Face's published files, not
imported from llama_export, so the tests compare two independent descriptions.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from functools import lru_cache
from pathlib import Path

from llama_export.assets.corpus import corpus
from llama_export.exporter.sources import TINY_ASSET

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                "<|eot_id|>", "<|python_tag|>"]
LLAMA3_SPECIALS = LLAMA3_NAMED + [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(LLAMA3_NAMED))]
BPE_VOCAB = 700  # byte-level: 256 bytes + 444 merges; trains in well under a second

# Meta-Llama-2-7b-chat-hf's tokenizer_config.json chat_template.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
# Llama 3.2 Instruct's template, shortened (no tool calling): system header with today's date via strftime_now.
LLAMA3_CHAT_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def sentencepiece_protobuf_for_transformers() -> None:
    """transformers reads tokenizer.model through sentencepiece's generated protobuf module, which needs protobuf
    >= 7; this environment pins protobuf 6 (tritonclient). transformers ships the same schema generated for
    protobuf >= 4: register it under sentencepiece's name so the real conversion code runs."""
    try:
        import sentencepiece.sentencepiece_model_pb2  # noqa: F401
    except Exception:  # noqa: BLE001 - google.protobuf.runtime_version.VersionError
        from transformers.utils import sentencepiece_model_pb2_new

        sys.modules["sentencepiece.sentencepiece_model_pb2"] = sentencepiece_model_pb2_new


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def meta_llama2_tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TINY_ASSET / "tokenizer.model", folder / "tokenizer.model")
    return folder


def hf_llama2_tokenizer(folder: Path, legacy: bool = False) -> Path:
    """As Meta-Llama-2-7b-chat-hf ships it; tokenizer.json is transformers' conversion of tokenizer.model."""
    from transformers import AutoTokenizer

    sentencepiece_protobuf_for_transformers()
    meta_llama2_tokenizer(folder)
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": legacy,
        "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "__type": "AddedToken"},
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False,
        "model_max_length": 4096})
    converted = AutoTokenizer.from_pretrained(folder)
    converted.backend_tokenizer.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    _write_json(folder / "tokenizer_config.json", {**config, "chat_template": LLAMA2_CHAT_TEMPLATE})
    _write_json(folder / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    return folder


@lru_cache
def _trained_bpe_json() -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    train, _ = corpus()
    lines = train[:300_000].splitlines() + ["naïve café déjà vu — “quotes” ½ € 日本語のテキスト 😀🎉 Ünïcödé"] * 20
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False, special_tokens=[],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    base = tok.get_vocab_size()
    tok.add_special_tokens(LLAMA3_SPECIALS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", base)])])
    return tok.to_str()


def hf_llama3_tokenizer(folder: Path, eos_token_id=None) -> Path:
    """As Llama-3.1-8B-Instruct ships it: tokenizer.json only; generation_config's eos_token_id defaults to the
    list [<|end_of_text|>, <|eom_id|>, <|eot_id|>]."""
    from tokenizers import Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_str(_trained_bpe_json())
    tok.save(str(folder / "tokenizer.json"))
    ids = {token: tok.token_to_id(token) for token in LLAMA3_SPECIALS}
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True, "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072, "chat_template": LLAMA3_CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for t, i in ids.items()}})
    if eos_token_id is None:
        eos_token_id = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    _write_json(folder / "generation_config.json", {"bos_token_id": ids["<|begin_of_text|>"],
                                                    "eos_token_id": eos_token_id, "do_sample": True})
    return folder


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def meta_llama3_tokenizer(folder: Path) -> Path:
    """Meta's Llama 3 format: tokenizer.model = one 'base64(token bytes) rank' line per BPE token, ranks = the trained
    BPE's ids (in merge order); the special tokens are not in the file."""
    vocab = json.loads(_trained_bpe_json())["model"]["vocab"]
    decoder = _byte_decoder()
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(bytes(decoder[c] for c in token)).decode()} {rank}"
             for token, rank in sorted(vocab.items(), key=lambda item: item[1])]
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n", encoding="ascii")
    return folder
