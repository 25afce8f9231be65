"""Peak memory of a command's whole process tree, optionally under a hard cgroup v2 memory cap.

    python benchmarks/process_memory.py [--cap 10G] [--json] -- llama-export build --size 7b --precision fp16

Samples every process of the tree every 50 ms and reports the largest sums of RssAnon (anonymous memory: what
the OOM killer counts; mmapped weight files are page cache and do not count) and of VmRSS, plus wall time and
the exit code. With --cap (needs root; cgroup v1 or v2) the command runs in a cgroup of its own whose memory
limit is the cap, so a measurement that grows too far is OOM-killed alone, never a neighbour's job; the cgroup's own
peak usage is reported too (it includes page cache the tree dirtied).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def memory_of(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) of a process in bytes; (0, 0) once it has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in lines)
              if k in ("RssAnon", "VmRSS")}
    return fields.get("RssAnon", 0), fields.get("VmRSS", 0)


def parse_cap(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def make_cgroup(cap: int) -> tuple[Path, dict[str, str]]:
    """A capped cgroup under this process's own memory cgroup: v2 (memory.max) or v1 (memory.limit_in_bytes).
    Returns its folder and the names of its procs / peak / OOM-event files."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = next((line.split(":", 2)[2] for line in lines if line.split(":")[1] == "memory"), None)
    name = f"llama-export-bench-{os.getpid()}"
    if v1 is not None:
        folder = CGROUP_ROOT / "memory" / v1.lstrip("/") / name
        folder.mkdir()
        (folder / "memory.limit_in_bytes").write_text(str(cap))
        return folder, {"procs": "cgroup.procs", "peak": "memory.max_usage_in_bytes", "oom": "memory.failcnt"}
    v2 = next(line.split("::", 1)[1] for line in lines if line.startswith("0::"))
    folder = CGROUP_ROOT / v2.lstrip("/") / name
    folder.mkdir()
    (folder / "memory.max").write_text(str(cap))
    (folder / "memory.swap.max").write_text("0")
    return folder, {"procs": "cgroup.procs", "peak": "memory.peak", "oom": "memory.events"}


def measure(cmd: list[str], cap: str | None = None, env: dict | None = None, interval: float = 0.05) -> dict:
    cgroup = files = None
    if cap:
        cgroup, files = make_cgroup(parse_cap(cap))
        # the shell joins the capped cgroup, then becomes the command
        cmd = ["sh", "-c", f'echo $$ > "{cgroup / files["procs"]}" && exec "$@"', "sh", *cmd]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env)
    peak_anon = peak_rss = 0
    while child.poll() is None:
        sums = [memory_of(pid) for pid in process_tree(child.pid)]
        peak_anon = max(peak_anon, sum(a for a, _ in sums))
        peak_rss = max(peak_rss, sum(r for _, r in sums))
        time.sleep(interval)
    result = {"cmd": cmd, "rc": child.returncode, "wall_s": round(time.perf_counter() - start, 2),
              "peak_rss_anon": peak_anon, "peak_rss": peak_rss, "cap": cap}
    if cgroup is not None:
        try:
            result["cgroup_peak"] = int((cgroup / files["peak"]).read_text())
        except OSError:
            pass
        time.sleep(0.2)
        try:
            cgroup.rmdir()
        except OSError:
            pass
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", help="memory.max of a cgroup of its own, e.g. 10G (root, cgroup v2)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    cmd = options.cmd[1:] if options.cmd[:1] == ["--"] else options.cmd
    result = measure(cmd, options.cap)
    if options.json:
        print(json.dumps(result))
    else:
        print(f"exit {result['rc']} after {result['wall_s']} s; peak RssAnon {result['peak_rss_anon'] / 1e9:.2f} GB, "
              f"peak RSS {result['peak_rss'] / 1e9:.2f} GB over the process tree"
              + (f"; cgroup peak {result['cgroup_peak'] / 1e9:.2f} GB (cap {result['cap']})"
                 if "cgroup_peak" in result else ""), file=sys.stderr)
    sys.exit(result["rc"])


if __name__ == "__main__":
    main()
