"""Peak memory and wall time of a streamed export, against the time to write the same bytes to the same disk.

    python benchmarks/export_memory.py [--size 7b] [--precision fp16] [--out out/bench-export] [--keep]

The export runs in a child process (`llama-export export ... --quiet`); its peak RSS is that of its process
tree (the export and its weight-stream process), so this script's own memory does not count. Acceptance is
checked against the upper bound (the sum of each process's own peak). Two baselines write
a file of the same size in 64 MiB blocks and fsync it: through the page cache (a plain `write()`, what `cp` or
`torch.save` does) and around it (O_DIRECT, the disk's own speed, and what the exporter does: datafile.py).
Acceptance: peak RSS <= 3 GB and wall <= 2x the raw write time. Both outputs are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from process_memory import process_tree  # the benchmarks folder is not a package

BLOCK = 64 << 20


def export_child(size: str, precision: str, out: Path) -> dict:
    """Wall seconds, peak RSS and CPU seconds of `llama-export export` in a child process.

    The export streams a big model's weights from a process of its own (exporter/stream_process.py), so the
    peak is the process tree's: the largest sum of VmRSS over the tree, sampled every 50 ms, and the sum of
    each process's own peak (VmHWM), which bounds it from above."""
    cmd = [sys.executable, "-m", "llama_export.cli", "export", "--size", size, "--random-init",
           "--precision", precision, "--out", str(out), "--quiet"]
    start = time.perf_counter()
    export = subprocess.Popen(cmd)
    peak_sum, own_peaks = 0, {}
    while export.poll() is None:
        rss = 0
        for pid in process_tree(export.pid):
            status = read_status(pid)
            if status:
                rss += status["VmRSS"]
                own_peaks[pid] = max(own_peaks.get(pid, 0), status["VmHWM"])
        peak_sum = max(peak_sum, rss)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if export.returncode:
        raise SystemExit(f"the export failed (exit code {export.returncode})")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the export and its stream process, both waited for
    return {"wall": wall, "peak_rss": peak_sum, "peak_rss_upper": sum(own_peaks.values()),
            "processes": len(own_peaks), "user": usage.ru_utime, "system": usage.ru_stime}



def read_status(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM of a process, in bytes (None once it has gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if line.startswith(("VmRSS", "VmHWM")))
    if len(fields) < 2:
        return None  # a zombie: no memory left
    return {key: int(value.split()[0]) * 1024 for key, value in fields.items()}


def raw_write(path: Path, n_bytes: int, direct: bool) -> float:
    """Seconds to write n_bytes (non-zero data, so no filesystem shortcut) and fsync; `direct`: O_DIRECT."""
    block = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    block.write(os.urandom(BLOCK))
    view = memoryview(block)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    start = time.perf_counter()
    fd = os.open(path, flags, 0o644)
    try:
        left = -(-n_bytes // 4096) * 4096  # whole blocks for O_DIRECT (at most 4 KB more than n_bytes)
        while left > 0:
            left -= os.write(fd, view[: min(left, BLOCK)])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    view.release()
    block.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7b")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--out", type=Path, default=Path("out/bench-export"))
    parser.add_argument("--keep", action="store_true")
    opts = parser.parse_args()

    shutil.rmtree(opts.out, ignore_errors=True)
    run = export_child(opts.size, opts.precision, opts.out)
    wall, peak = run["wall"], run["peak_rss_upper"]
    manifest = json.loads((opts.out / "manifest.json").read_text())
    n_bytes = sum(f["size"] for f in manifest["files"].values())
    baseline_path = opts.out.parent / f".{opts.out.name}.rawwrite"
    try:
        buffered = raw_write(baseline_path, n_bytes, direct=False)
        direct = raw_write(baseline_path, n_bytes, direct=True)
    finally:
        baseline_path.unlink(missing_ok=True)
    if not opts.keep:
        shutil.rmtree(opts.out, ignore_errors=True)
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cpu, {platform.machine()}, Python {platform.python_version()}",
        "command": f"llama-export export --size {opts.size} --random-init --precision {opts.precision} --quiet",
        "bytes_written": n_bytes,
        "processes": run["processes"],
        "peak_rss_gb": round(run["peak_rss"] / 1e9, 3),
        "peak_rss_upper_gb": round(run["peak_rss_upper"] / 1e9, 3),
        "export_wall_s": round(wall, 1),
        "export_user_s": round(run["user"], 1),
        "export_system_s": round(run["system"], 1),
        "raw_write_buffered_s": round(buffered, 1),
        "raw_write_direct_s": round(direct, 1),
        "ratio_to_buffered_write": round(wall / buffered, 2),
        "ratio_to_direct_write": round(wall / direct, 2),
        "accept_peak_rss_le_3gb": peak <= 3e9,
        "accept_wall_le_2x_buffered_write": wall <= 2 * buffered,
        "accept_wall_le_2x_direct_write": wall <= 2 * direct,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
