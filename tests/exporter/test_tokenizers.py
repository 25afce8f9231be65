"""The three tokenizer kinds against their references over >= 1,000 seeded varied strings, stop ids, chat templates.

References: transformers.AutoTokenizer on the same folder for tokenizer.json (Llama 2 and Llama 3 style) and for
the tiktoken file (transformers converts it when tokenizer_config.json names the special tokens); Meta's reference
logic (SentencePiece's encode with BOS in front) for SentencePiece, since transformers 5 converts tokenizer.model to
a different pipeline (see sentencepiece_model.py).
"""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizer_folders import (
    LLAMA3_SPECIALS,
    hf_llama2_tokenizer,
    hf_llama3_tokenizer,
    meta_llama2_tokenizer,
    meta_llama3_tokenizer,
)
from tokenizer_strings import varied_strings

from llama_export.errors import UserError
from llama_export.exporter.tokenization import detect, load_tokenizer, render_chat

N_STRINGS = 1200


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")


def _transformers(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _assert_same_as_transformers(folder, specials):
    ours, theirs = load_tokenizer(folder), _transformers(folder)
    strings = varied_strings(N_STRINGS, specials=specials)
    assert len(strings) >= 1000 and "" in strings and max(map(len, strings)) > 10_000
    for s in strings:
        expected = theirs.encode(s)
        assert ours.encode(s) == expected, s
        assert ours.encode(s, bos=False) == theirs.encode(s, add_special_tokens=False), s
        assert ours.decode(expected) == theirs.decode(expected, skip_special_tokens=True), s
    assert ours.vocab_size == len(theirs)


def test_hf_llama3_tokenizer_json_encodes_and_decodes_as_transformers(tmp_path):
    folder = hf_llama3_tokenizer(tmp_path / "hf3")
    assert load_tokenizer(folder).kind == "hf"
    _assert_same_as_transformers(folder, LLAMA3_SPECIALS[:12])


@pytest.mark.parametrize("legacy", [False, True])
def test_hf_llama2_tokenizer_json_encodes_and_decodes_as_transformers(tmp_path, legacy):
    """Llama 2 HF folders hold tokenizer.model and tokenizer.json: tokenizer.json wins, rebuilt as transformers'
    LlamaTokenizer rebuilds it (legacy decides whether text after <s> gets a leading "▁")."""
    folder = hf_llama2_tokenizer(tmp_path / "hf2", legacy=legacy)
    assert load_tokenizer(folder).kind == "hf"
    _assert_same_as_transformers(folder, ["<s>", "</s>", "<unk>"])


def test_meta_llama3_tiktoken_encodes_and_decodes_as_transformers_conversion(tmp_path):
    """Meta's folder has only tokenizer.model; transformers converts a tiktoken file when tokenizer_config.json lists
    the special tokens, so the reference folder is a copy with that config added (read by transformers only)."""
    folder = meta_llama3_tokenizer(tmp_path / "meta3")
    ours = load_tokenizer(folder)
    assert ours.kind == "llama3-tiktoken" and ours.files == ("tokenizer.model",)
    base = ours.vocab_size - 256
    reference = tmp_path / "meta3-for-transformers"
    shutil.copytree(folder, reference)
    (reference / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "added_tokens_decoder": {str(base + i): {"content": t, "special": True} for i, t in enumerate(LLAMA3_SPECIALS)},
    }), encoding="utf-8")
    theirs = _transformers(reference)
    for s in varied_strings(N_STRINGS, specials=LLAMA3_SPECIALS[:12]):
        expected = theirs.encode(s)
        assert ours.encode(s) == expected, s
        assert ours.decode(expected) == theirs.decode(expected, skip_special_tokens=True), s
    assert (ours.bos_id, ours.eos_id) == (theirs.convert_tokens_to_ids("<|begin_of_text|>"), base + 1)


def test_sentencepiece_encodes_and_decodes_as_metas_reference(tmp_path):
    import sentencepiece

    folder = meta_llama2_tokenizer(tmp_path / "meta2")
    ours = load_tokenizer(folder)
    assert ours.kind == "sentencepiece"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    strings = [s for s in varied_strings(N_STRINGS + 100, seed=1) if not any(t in s for t in ("<s>", "</s>", "<unk>"))]
    assert len(strings) >= 1000
    for s in strings:  # Meta's llama/tokenizer.py: encode(s, bos=True) = [bos_id] + sp.encode(s); decode = sp.decode
        expected = [sp.bos_id(), *sp.encode(s)]
        assert ours.encode(s) == expected, s
        assert ours.decode(expected) == sp.decode(expected), s


def test_sentencepiece_reads_control_token_text_as_the_token(tmp_path):
    import sentencepiece

    ours = load_tokenizer(meta_llama2_tokenizer(tmp_path / "meta2"))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "meta2" / "tokenizer.model"))
    ids = ours.encode("<s>[INST] hi [/INST] ok </s><s>[INST] more", bos=False)
    assert ids == [1, *sp.encode("[INST] hi [/INST] ok "), 2, 1, *sp.encode("[INST] more")]


def test_detection_order_and_kinds(tmp_path):
    hf2 = hf_llama2_tokenizer(tmp_path / "hf2")
    assert {p.name for p in hf2.iterdir()} >= {"tokenizer.model", "tokenizer.json"}
    assert detect(hf2)[0].kind == "hf"  # tokenizer.json wins, as in AutoTokenizer
    assert detect(hf2 / "tokenizer.model")[0].kind == "sentencepiece"  # a file names its kind by content
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copyfile(meta_llama3_tokenizer(tmp_path / "m3") / "tokenizer.model", renamed / "tokenizer.model")
    assert detect(renamed)[0].kind == "llama3-tiktoken"  # by content, not by name
    assert detect(tmp_path / "m3" / "..") is None
    assert load_tokenizer(hf2).files == ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
    with pytest.raises(UserError, match="manifest says sentencepiece"):
        load_tokenizer(hf2, expected_kind="sentencepiece")


@pytest.mark.parametrize("eos", [5, [5, 7], None])
def test_stop_ids_are_generation_config_eos_plus_the_tokenizers_eos(tmp_path, eos):
    folder = hf_llama3_tokenizer(tmp_path / "hf3", eos_token_id=eos)
    if eos is None:
        (folder / "generation_config.json").unlink()
    tok = load_tokenizer(folder)
    eot = tok.backend.token_to_id("<|eot_id|>")  # tokenizer_config.json's eos_token
    assert tok.eos_id == eot
    assert tok.stop_ids == {eot} | ({eos} if isinstance(eos, int) else set(eos or []))


def test_default_llama3_stop_ids(tmp_path):
    hf = load_tokenizer(hf_llama3_tokenizer(tmp_path / "hf3"))
    meta = load_tokenizer(meta_llama3_tokenizer(tmp_path / "meta3"))
    ids = {name: hf.backend.token_to_id(name) for name in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")}
    assert hf.stop_ids == meta.stop_ids == set(ids.values())


def test_bad_generation_config_is_a_user_error(tmp_path):
    folder = hf_llama3_tokenizer(tmp_path / "hf3", eos_token_id=["x"])
    with pytest.raises(UserError, match="eos_token_id"):
        _ = load_tokenizer(folder).stop_ids


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief.\n"}, {"role": "user", "content": "  What is 2+2? 😀 "}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": " b "}, {"role": "user", "content": "c"}],
]


@pytest.mark.parametrize("make", [hf_llama2_tokenizer, hf_llama3_tokenizer])
def test_chat_template_renders_as_transformers(tmp_path, make):
    folder = make(tmp_path / "chat")
    ours, theirs = load_tokenizer(folder), _transformers(folder)
    for messages in CONVERSATIONS:
        text = render_chat(ours, messages)
        assert text == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ours.encode(text, bos=False) == theirs.apply_chat_template(messages, add_generation_prompt=True,
                                                                          tokenize=True, return_dict=False)


def test_chat_template_file_wins_and_errors_are_user_errors(tmp_path):
    folder = hf_llama2_tokenizer(tmp_path / "chat")
    tok = load_tokenizer(folder)
    with pytest.raises(UserError, match="roles must alternate"):
        render_chat(tok, [{"role": "assistant", "content": "x"}])
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] | upper }}", encoding="utf-8")
    assert render_chat(load_tokenizer(folder), CONVERSATIONS[0]) == "<s>HELLO!"
    assert render_chat(load_tokenizer(folder), CONVERSATIONS[0]) == _transformers(folder).apply_chat_template(
        CONVERSATIONS[0], add_generation_prompt=True, tokenize=False)
    with pytest.raises(UserError, match="no chat template"):
        render_chat(load_tokenizer(meta_llama2_tokenizer(tmp_path / "plain")), CONVERSATIONS[0])
