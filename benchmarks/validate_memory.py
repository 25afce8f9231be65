"""Peak memory of `validate` on a 2-layer model with 7B shapes (dim 4096, hidden 11008, vocab 32000; random weights).

The claim checked: validation holds at most one copy of the weights per side at a time (the fp32 Torch reference,
then the Torch noise-floor model, then the ORT session), so peak RSS ≈ one fp32 copy plus runtime overhead, not the
sum of the sides. Export and validation each run in a child process; the validation child reports its own
ru_maxrss. Results go in docs/BENCHMARKS.md ("Validation memory").

    python benchmarks/validate_memory.py [--precision fp32] [--steps 8] [--prompt-tokens 32] [--bisect always]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPORT = """
import sys
from llama_export.config import SIZES
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.options import ExportOptions
export_to_folder(RandomCheckpoint(SIZES["7b"].replace(n_layers=2), 0), sys.argv[1], ExportOptions(sys.argv[2]),
                 quiet=True)
"""

VALIDATE = """
import json, resource, sys, time
from llama_export.validate.pipeline import validate_build
start = time.perf_counter()
report = validate_build(sys.argv[1], steps=int(sys.argv[2]), prompt_tokens=int(sys.argv[3]), bisect=sys.argv[4])
print(json.dumps({"passed": report.passed, "wall_s": time.perf_counter() - start, "timings": report.timings,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--bisect", default="always", choices=["auto", "always", "never"])
    options = parser.parse_args()

    from llama_export.config import SIZES

    args = SIZES["7b"].replace(n_layers=2)
    weight_bytes = args.n_params * 4
    with tempfile.TemporaryDirectory(prefix="validate-memory-") as tmp:
        folder = Path(tmp) / "out"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", EXPORT, str(folder), options.precision], check=True)
        export_s = time.perf_counter() - start
        done = subprocess.run([sys.executable, "-c", VALIDATE, str(folder), str(options.steps),
                               str(options.prompt_tokens), options.bisect], check=True, capture_output=True,
                              text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    peak = result["peak_rss_bytes"]
    print(f"model: 7b shapes, 2 layers, {args.n_params:,} params; fp32 weights {weight_bytes / 1e9:.2f} GB")
    print(f"export ({options.precision}): {export_s:.1f} s")
    print(f"validate --steps {options.steps} --prompt-tokens {options.prompt_tokens} --bisect {options.bisect}: "
          f"{result['wall_s']:.1f} s, passed={result['passed']}")
    print(f"  stages: {result['timings']}")
    print(f"peak RSS of validation: {peak / 1e9:.2f} GB = {peak / weight_bytes:.2f} × the fp32 weights")


if __name__ == "__main__":
    main()
