"""The memory planner's limit inside a real capped cgroup: file page cache the cgroup filled is not "in use"."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20

CHILD = """
import os, sys
from llama_export import memory
with open(sys.argv[1], "wb") as f:  # page cache charged to this cgroup, made clean (reclaimable) by fsync
    for _ in range(int(sys.argv[2])):
        f.write(os.urandom(1 << 20))
    f.flush(); os.fsync(f.fileno())
headroom, source = memory._cgroup_headroom()
print(headroom, source)
"""


def capped_cgroup(cap: int) -> Path:
    spec = importlib.util.spec_from_file_location("process_memory", ROOT / "benchmarks" / "process_memory.py")
    process_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(process_memory)
    try:
        folder, _ = process_memory.make_cgroup(cap)
    except OSError as error:
        pytest.skip(f"cannot create a memory cgroup here (needs root and a writable cgroup fs): {error}")
    return folder


def test_cgroup_file_cache_counts_as_headroom(tmp_path):
    cap, written = 768 * MB, 400 * MB
    folder = capped_cgroup(cap)
    try:
        done = subprocess.run(
            ["sh", "-c", f'echo $$ > "{folder / "cgroup.procs"}" && exec "$@"', "sh",
             sys.executable, "-c", CHILD, str(tmp_path / "cache.bin"), str(written // MB)],
            check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        (tmp_path / "cache.bin").unlink(missing_ok=True)  # frees the cache, so the empty cgroup can be removed
        try:
            folder.rmdir()
        except OSError:
            pass
    assert done.returncode == 0, done.stderr
    headroom = int(done.stdout.split()[0])
    # The child's interpreter and imports take well under 150 MB; the 400 MB of clean cache must not count, or the
    # headroom would be below cap - 400 MB.
    assert cap - 150 * MB < headroom <= cap, done.stdout
    assert folder.name in done.stdout


RELEASE_PROBE = """
import json, pathlib, torch
from llama_export.memory import release_free_heap

def rss_anon():
    status = pathlib.Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))

torch.ones(4 << 20)  # freeing a 16 MB mmapped chunk raises glibc's mmap threshold: later 1 MB ones use the heap
chunks = [torch.ones(1 << 18) for _ in range(300)]  # 300 x 1 MB, touched
keep = chunks[-1]  # the heap's top stays in use, so free() alone cannot give the rest back
del chunks
before = rss_anon()
release_free_heap()
print(json.dumps({"before": before, "after": rss_anon()}))
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="release_free_heap acts on glibc only")
def test_release_free_heap_returns_freed_chunks_pinned_below_the_heap_top():
    """The 300 MB of freed 1 MB tensors under a live one stay resident until release_free_heap (AWQ calls it after
    each layer)."""
    probe = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, check=True)
    rss = json.loads(probe.stdout)
    assert rss["before"] - rss["after"] > 200e6, rss
