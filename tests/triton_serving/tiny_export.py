"""The tiny model's export folder for the Triton tests, and a stand-in tokenizer for random-weight models."""

from __future__ import annotations

import io
from pathlib import Path


def train_stand_in_tokenizer(vocab_size: int) -> bytes:
    """A SentencePiece model on Python's help topics (offline), for a random-weight export. Its vocabulary
    equals the model's so every id a random model emits decodes."""
    import pydoc_data.topics

    import sentencepiece as spm

    text = "\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model,
                                   vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2)
    return model.getvalue()


def export_tiny(out: Path) -> Path:
    """The built-in trained tiny model (with its tokenizer) through the export library."""
    from llama_export.exporter.export import export_to_folder
    from llama_export.exporter.sources import resolve_checkpoint

    return export_to_folder(resolve_checkpoint(), out, quiet=True)
