"""Deliver 1: an existing --out is replaced only when llama-export wrote it (or --force); never the current
directory, the checkpoint or a folder holding it. Leftovers of a killed run are removed by the next run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from hardening_helpers import assert_one_line_error, dead_pid, leftovers, run_cli, run_program, snapshot

from llama_export.errors import UserError
from llama_export.exporter import artifacts
from llama_export.exporter.sources import TINY_ASSET


def test_a_foreign_out_folder_is_refused_and_kept_byte_identical(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("x\n")
    (target / "manifest.json").write_text('{"tool": {"name": "someone-else"}}')
    before = snapshot(tmp_path)
    outcome = run_cli("export", "--out", target, "--quiet", cwd=tmp_path)
    assert_one_line_error(outcome, str(target), "not a llama-export output", "--force")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_the_current_directory_and_an_empty_out_are_refused(tmp_path, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    outcome = run_cli("export", "--out", out, "--quiet", "--force", cwd=work)
    assert_one_line_error(outcome, "--out")
    assert snapshot(tmp_path) == before


def test_the_checkpoint_and_its_parent_are_never_replaced_even_with_force(tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(TINY_ASSET, checkpoint)
    before = snapshot(tmp_path)
    for out in (checkpoint, tmp_path):
        with pytest.raises(UserError, match="which this command reads"):
            artifacts.check_replaceable(out, force=True, protect=[checkpoint])
    outcome = run_cli("export", "--checkpoint", checkpoint, "--out", checkpoint, "--force", "--quiet")
    assert_one_line_error(outcome, str(checkpoint), "which this command reads")
    assert snapshot(tmp_path) == before


def test_a_previous_output_and_an_empty_folder_are_replaced(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "manifest.json").write_text('{"tool": {"name": "llama-export"}}')
    (tmp_path / "empty").mkdir()
    for target in (own, tmp_path / "empty"):
        with artifacts.staged_output(target) as staging:
            (staging / "new.txt").write_text("new")
        assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert leftovers(tmp_path) == []


def test_force_replaces_a_foreign_folder(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with artifacts.staged_output(target, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_leftovers_of_a_killed_run_are_removed_with_a_note(tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "manifest.json").write_text('{"tool": {"name": "llama-export"}}')
    pid = dead_pid()
    stale = tmp_path / f".out.tmp-{pid}-abc"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.onnx.data").write_bytes(b"\0" * 4096)
    unrelated = tmp_path / ".other.tmp-1-abc"  # another folder's staging: not ours to judge
    unrelated.mkdir()
    with artifacts.staged_output(target) as staging:
        (staging / "manifest.json").write_text('{"tool": {"name": "llama-export"}, "run": 2}')
    assert not stale.exists() and unrelated.exists()
    assert "removed 1 leftover staging folder(s)" in capsys.readouterr().err
    assert leftovers(tmp_path) == [".other.tmp-1-abc"]


def test_a_folder_set_aside_by_a_killed_run_is_moved_back(tmp_path):
    """Killed between the two renames: DIR lives only in `.DIR.old-PID-*`; the next run restores it first."""
    aside = tmp_path / f".out.old-{dead_pid()}-xyz" / "out"
    aside.mkdir(parents=True)
    (aside / "manifest.json").write_text('{"tool": {"name": "llama-export"}}')
    assert artifacts.clean_stale_siblings(tmp_path / "out") == 1
    assert (tmp_path / "out" / "manifest.json").is_file() and leftovers(tmp_path) == []


def test_a_staging_folder_of_a_live_process_is_left_alone_and_named(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".out.tmp-{sleeper.pid}-abc"
        live.mkdir()
        with pytest.raises(UserError, match=f"PID {sleeper.pid}"), artifacts.staged_output(tmp_path / "out"):
            pass
        assert live.is_dir() and not (tmp_path / "out").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_mount_point_is_refused_before_any_work(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=False,
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        outcome = run_program("export", "--out", mount, "--quiet")
        assert_one_line_error(outcome, str(mount), "mount point", f"{mount}/NAME")
        assert os.listdir(mount) == [] and leftovers(tmp_path) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_triton_adds_its_models_beside_others_and_refuses_what_it_did_not_write(export_copy, tmp_path):
    pytest.importorskip("tritonclient")
    repo = tmp_path / "repo"
    (repo / "other_model" / "1").mkdir(parents=True)
    (repo / "other_model" / "config.pbtxt").write_text('name: "other_model"')
    (repo / "README.md").write_text("my notes")
    others = snapshot(repo)
    written = run_cli("triton", export_copy, "--repo", repo, "--name", "m1")
    assert written.code == 0, written.stderr
    after = snapshot(repo)
    assert {k: after[k] for k in others} == others, "other models and a foreign README stay byte-identical"
    assert {"m1_onnx", "m1_generate", "m1_complete"} <= {p.name for p in repo.iterdir()}
    assert run_cli("triton", export_copy, "--repo", repo, "--name", "m1").code == 0  # its own folders: replaced

    (repo / "m2_onnx").mkdir()
    (repo / "m2_onnx" / "config.pbtxt").write_text('name: "m2_onnx"')
    before = snapshot(tmp_path)
    assert_one_line_error(run_cli("triton", export_copy, "--repo", repo, "--name", "m2"), str(repo / "m2_onnx"),
                          "not a llama-export output", "--force")
    for name in ("../victim", "a/b", "has space", ".hidden"):
        assert_one_line_error(run_cli("triton", export_copy, "--repo", repo, "--name", name), "--name",
                              "not a valid Triton model name")
    assert_one_line_error(run_cli("triton", export_copy, "--repo", export_copy), "is the exported folder")
    assert_one_line_error(run_cli("triton", export_copy, "--repo", tmp_path), "holds it")
    assert snapshot(tmp_path) == before and leftovers(repo) == []
