"""Deliver 5: system faults (full disk, read-only mount, a file in the path, a busy rename), damaged input and bad
option values are one line naming the path or option, exit 2; nothing is left behind."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest
from hardening_helpers import assert_one_line_error, leftovers, run_cli, snapshot

from llama_export.exporter import artifacts
from llama_export.exporter.checkpoints import save_checkpoint


@pytest.mark.parametrize("argv, fragments", [
    (["export", "--opset", "99"], ["--opset 99"]),
    (["export", "--precision", "int8", "--alpha", "nan"], ["--alpha", "not a finite number"]),
    (["generate", "--prompt", "hi", "--temperature", "nan"], ["--temperature", "not a finite number"]),
    (["generate", "--prompt", "hi", "--top-p", "inf"], ["--top-p"]),
    (["generate", "--prompt", b"caf\xe9 \xff"], ["--prompt", "UTF-8"]),
])
def test_bad_option_values_are_one_line(tmp_path, argv, fragments):
    outcome = run_cli(*argv, cwd=tmp_path)
    assert_one_line_error(outcome, *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["n_heads", "dim", "max_seq_len"])
def test_a_config_with_zero_heads_or_sizes_is_one_line(tiny_state, tiny_args, tmp_path, key):
    folder = tmp_path / "ckpt"
    save_checkpoint(tiny_state, tiny_args, folder)
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, key: 0}))
    before = snapshot(tmp_path)
    outcome = run_cli("export", "--checkpoint", folder, "--out", tmp_path / "out")
    assert_one_line_error(outcome, str(folder / "params.json"), key)
    assert snapshot(tmp_path) == before


def test_an_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("keep")
    before = snapshot(tmp_path)
    outcome = run_cli("export", "--out", tmp_path / "file" / "sub", "--quiet")
    assert_one_line_error(outcome, str(tmp_path / "file"))
    assert snapshot(tmp_path) == before


def test_a_failed_final_rename_keeps_everything_as_it_was(export_copy, tmp_path, monkeypatch):
    """Fault injection: the rename into place fails (EBUSY, as for a mount point) after all the work."""
    def busy(_new, target):
        raise OSError(errno.EBUSY, "Device or resource busy", str(target))

    monkeypatch.setattr(artifacts, "_replace_dir", busy)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "other_model").mkdir()
    (repo / "other_model" / "config.pbtxt").write_text('name: "other_model"')
    before = snapshot(tmp_path)
    outcome = run_cli("triton", export_copy, "--repo", repo, "--no-verify")
    assert_one_line_error(outcome, str(repo), "Device or resource busy")
    assert snapshot(tmp_path) == before and leftovers(repo) == []


@pytest.fixture
def mount_point(tmp_path):
    """Runs `mount` with the given options on a fresh folder; unmounts at teardown, whatever happened."""
    mounted = []

    def mount(*options: str, source: str = "tmpfs"):
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir(exist_ok=True)
        done = subprocess.run(["mount", *options, source, str(target)], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount here (needs root): {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(mount_point, tiny_state, tiny_args, tmp_path):
    checkpoint = tmp_path / "ckpt"
    save_checkpoint(tiny_state, tiny_args, checkpoint)  # ~0.2 MB of weights: more than the filesystem holds
    small = mount_point("-t", "tmpfs", "-o", "size=64k")
    outcome = run_cli("export", "--checkpoint", checkpoint, "--out", small / "out", "--quiet")
    assert_one_line_error(outcome, "No space left on device", "free some space")
    assert list(small.iterdir()) == []


def test_a_read_only_filesystem_is_refused_before_any_work(mount_point, export_copy, tmp_path):
    readonly = mount_point("--bind", "-o", "ro", source=str(export_copy))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)], check=False)  # older mounts need a remount
    if not subprocess.run(["touch", str(readonly / "probe")], check=False, capture_output=True).returncode:
        pytest.skip("the bind mount is writable here")
    before = snapshot(export_copy)
    assert_one_line_error(run_cli("validate", readonly, "--quiet"), str(readonly), "not writable",
                          "Read-only file system")
    assert_one_line_error(run_cli("triton", readonly, "--no-verify"), "Read-only file system")
    assert_one_line_error(run_cli("export", "--out", readonly / "new", "--quiet"), "Read-only file system")
    assert snapshot(export_copy) == before
