"""Peak memory and wall time of a streamed export, against the time to write the same bytes to the same disk.

    python benchmarks/export_memory.py [--size 7b] [--precision fp16] [--out out/bench-export] [--keep]

The export runs in a child process (`llama-export export ... --quiet`); its peak RSS is the child's
ru_maxrss (resource.getrusage(RUSAGE_CHILDREN)), so this script's own memory does not count. The baseline writes
a file of the same size in 64 MiB blocks and fsyncs it, as the exporter does. Acceptance: peak RSS <= 3 GB and
wall <= 2x the raw write time. Both outputs are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BLOCK = 64 << 20


def export_child(size: str, precision: str, out: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of `llama-export export` in a child process."""
    cmd = [sys.executable, "-m", "llama_export.cli", "export", "--size", size, "--random-init",
           "--precision", precision, "--out", str(out), "--quiet"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return wall, peak_kib * 1024


def raw_write(path: Path, n_bytes: int) -> float:
    """Seconds to write n_bytes (non-zero data, so no filesystem shortcut) and fsync."""
    block = os.urandom(BLOCK)
    start = time.perf_counter()
    with open(path, "wb") as f:
        left = n_bytes
        while left > 0:
            f.write(block[: min(left, BLOCK)])
            left -= BLOCK
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7b")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--out", type=Path, default=Path("out/bench-export"))
    parser.add_argument("--keep", action="store_true")
    opts = parser.parse_args()

    shutil.rmtree(opts.out, ignore_errors=True)
    wall, peak = export_child(opts.size, opts.precision, opts.out)
    manifest = json.loads((opts.out / "manifest.json").read_text())
    n_bytes = sum(f["size"] for f in manifest["files"].values())
    baseline_path = opts.out.parent / f".{opts.out.name}.rawwrite"
    try:
        write = raw_write(baseline_path, n_bytes)
    finally:
        baseline_path.unlink(missing_ok=True)
    if not opts.keep:
        shutil.rmtree(opts.out, ignore_errors=True)
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cpu, {platform.machine()}, Python {platform.python_version()}",
        "command": f"llama-export export --size {opts.size} --random-init --precision {opts.precision} --quiet",
        "bytes_written": n_bytes,
        "peak_rss_gb": round(peak / 1e9, 3),
        "export_wall_s": round(wall, 1),
        "raw_write_s": round(write, 1),
        "ratio_wall_to_raw_write": round(wall / write, 2),
        "accept_peak_rss_le_3gb": peak <= 3e9,
        "accept_wall_le_2x_write": wall <= 2 * write,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
