"""The tiny model's export folder for the Triton tests (trained asset, or random weights + stand-in tokenizer)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from llama_export.exporter import artifacts
from llama_export.exporter.sources import TINY_ASSET


def train_stand_in_tokenizer(vocab_size: int) -> bytes:
    """A SentencePiece model on Python's help topics (offline, ~2 s), for a random-weight export. Its vocabulary
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
    """The built-in tiny model through the export library; until its trained weights exist, `--size tiny
    --random-init` plus a stand-in tokenizer (listed in the manifest like any file)."""
    from llama_export.config import SIZES
    from llama_export.exporter.export import export_to_folder
    from llama_export.exporter.random_init import RandomCheckpoint
    from llama_export.exporter.sources import resolve_checkpoint

    trained = (TINY_ASSET / "tokenizer.model").is_file() and any(TINY_ASSET.glob("*.safetensors"))
    checkpoint = resolve_checkpoint() if trained else RandomCheckpoint(SIZES["tiny"], seed=0)
    folder = export_to_folder(checkpoint, out, quiet=True)
    if not (folder / "tokenizer.model").is_file():
        (folder / "tokenizer.model").write_bytes(train_stand_in_tokenizer(SIZES["tiny"].vocab_size))
        manifest = json.loads((folder / artifacts.MANIFEST).read_text())
        manifest.pop("files", None)
        manifest["tokenizer"] = {"kind": "sentencepiece", "files": ["tokenizer.model"]}
        artifacts.write_manifest(folder, manifest)
    return folder

