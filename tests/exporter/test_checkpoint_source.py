"""The manifest records the checkpoint source as data (format, path / size + seed, fingerprint); later commands
reopen exactly that source, and never parse the display description."""

from __future__ import annotations

import json
import shutil

import pytest

from llama_export.config import SIZES
from llama_export.errors import UserError
from llama_export.exporter.checkpoints import open_checkpoint, save_checkpoint
from llama_export.exporter.meta_format import save_meta_checkpoint
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.sources import TINY_ASSET, reopen_source, resolve_checkpoint


@pytest.fixture
def folders(tmp_path, tiny_args, tiny_state, write_hf):
    """One folder per on-disk format, holding the same weights."""
    write_hf(tiny_state, tiny_args, tmp_path / "hf")
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path / "meta", n_shards=2)
    save_checkpoint(tiny_state, tiny_args, tmp_path / "own")
    return tmp_path


def through_json(record: dict) -> dict:
    return json.loads(json.dumps(record))


@pytest.mark.parametrize("kind", ["hf", "meta", "own"])
def test_a_folder_source_is_recorded_as_format_and_absolute_path_and_reopens(folders, kind, monkeypatch):
    monkeypatch.chdir(folders)
    ckpt = open_checkpoint(kind)  # a relative path on the command line
    record = through_json(ckpt.manifest_record())
    assert record["format"] == kind and record["path"] == str(folders / kind)
    assert record["fingerprint"] == ckpt.fingerprint() and record["description"]
    reopened = reopen_source(record, ckpt.args)
    assert type(reopened) is type(ckpt) and reopened.fingerprint() == record["fingerprint"]


def test_the_description_is_display_only(folders, tiny_args):
    record = through_json(open_checkpoint(folders / "meta").manifest_record())
    # A description that reads like another source changes nothing: only the fields are used.
    record["description"] = f"{folders / 'hf'} (Hugging Face)"
    assert type(reopen_source(record, tiny_args)).__name__ == "MetaCheckpoint"
    # and the description alone (what older manifests held) is not enough to find the weights
    with pytest.raises(UserError, match="no source format.*--checkpoint PATH"):
        reopen_source({"description": record["description"], "fingerprint": record["fingerprint"]}, tiny_args)


def test_a_moved_folder_or_a_changed_format_is_a_user_error(folders, tiny_args):
    record = through_json(open_checkpoint(folders / "hf").manifest_record())
    shutil.move(folders / "hf", folders / "elsewhere")
    with pytest.raises(UserError, match=r"hf, which is not available here; pass --checkpoint PATH"):
        reopen_source(record, tiny_args, "out/x")
    shutil.copytree(folders / "own", folders / "hf")  # the same path now holds our own format
    with pytest.raises(UserError, match="no longer holds a hf checkpoint"):
        reopen_source(record, tiny_args, "out/x")


def test_random_weights_are_recorded_by_size_and_seed():
    ckpt = RandomCheckpoint(SIZES["tiny"], seed=7)
    record = through_json(ckpt.manifest_record())
    assert {k: record[k] for k in ("format", "size", "seed")} == {"format": "random", "size": "tiny", "seed": 7}
    assert "path" not in record
    assert reopen_source(record, SIZES["tiny"]).fingerprint() == ckpt.fingerprint()


def test_the_builtin_model_reopens_from_this_install_wherever_it_was_exported():
    record = through_json(resolve_checkpoint().manifest_record())
    assert record["format"] == "builtin" and record["size"] == "tiny"
    record["path"] = "/some/other/site-packages/llama_export/assets/tiny"  # another install exported it
    reopened = reopen_source(record, SIZES["tiny"])
    assert reopened.folder.resolve() == TINY_ASSET.resolve() and reopened.fingerprint() == record["fingerprint"]


def test_validate_reopens_the_recorded_folder_or_a_copy_with_the_same_fingerprint(folders):
    """The issue's failure was `build --checkpoint <HF or Meta folder>` exiting 2 in validation; the whole build on
    every folder kind runs in tests/test_real_folders.py."""
    from llama_export.exporter.export import export_to_folder
    from llama_export.validate.pipeline import validate_build

    out = export_to_folder(open_checkpoint(folders / "meta"), folders / "out-meta", quiet=True)
    assert validate_build(out, steps=2, prompt_tokens=8, write=False).passed
    # --checkpoint still points elsewhere: a copy of the same weights passes the fingerprint check ...
    shutil.copytree(folders / "meta", folders / "meta-copy")
    shutil.rmtree(folders / "meta")
    assert validate_build(out, steps=2, prompt_tokens=8, write=False, checkpoint=folders / "meta-copy").passed
    # ... other weights do not
    with pytest.raises(UserError, match="fingerprint differs"):
        validate_build(out, steps=2, prompt_tokens=8, write=False, checkpoint=folders / "own")
