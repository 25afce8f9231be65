"""Host memory of a TensorRT(-RTX) engine build on CPU, per builder option, as bytes per byte of weights.

    python benchmarks/engine_memory.py FOLDER [--variants baseline,weight-streaming,...] [--cap 10G] [--json]

Each variant builds FOLDER's model.onnx in a child process (llama_export.engine.builder.build_engine with a
`configure` hook) inside a capped cgroup (benchmarks/process_memory.py), so a build that grows too far is
OOM-killed alone; peak RssAnon over the child's tree is divided by the weight bytes (model.onnx.data). The
results and what each option is go in docs/ENGINES.md ("Builder host memory"); the planner's factor
(llama_export/memory.py ENGINE_WEIGHT_FACTOR) comes from the default variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from process_memory import measure

CHILD = """
import sys, tensorrt_rtx as trt
from llama_export.exporter.artifacts import load_manifest
from llama_export.build import default_limits
from llama_export.engine.builder import build_engine
folder, variant, plan = sys.argv[1], sys.argv[2], sys.argv[3]
built = load_manifest(folder)
profiles = {"prefill-only": ("prefill",), "decode-only": ("decode",)}.get(variant)
def configure(trt, config):
    if variant == "weight-streaming":
        config.set_flag(trt.BuilderFlag.WEIGHT_STREAMING)
    elif variant == "strip-plan":
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
    elif variant == "strip-plan-refit-identical":
        config.set_flag(trt.BuilderFlag.STRIP_PLAN); config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    elif variant == "refit":
        config.set_flag(trt.BuilderFlag.REFIT)
    elif variant == "workspace-64M":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 64 << 20)
    elif variant == "opt-level-0":
        config.builder_optimization_level = 0
    elif variant == "one-target-sm86":
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    elif variant != "baseline" and profiles is None:
        raise SystemExit(f"unknown variant {variant}")
    return [variant]
build_engine(built.model_path, built.args, plan, default_limits(built.args.max_seq_len), builder="tensorrt-rtx",
             profiles=profiles, configure=configure)
"""

VARIANTS = ("baseline", "prefill-only", "decode-only", "weight-streaming", "strip-plan", "strip-plan-refit-identical",
            "refit", "workspace-64M", "opt-level-0", "one-target-sm86")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cap", default="10G")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    weights = sum(p.stat().st_size for p in options.folder.glob("model.onnx*"))
    rows = []
    for variant in options.variants.split(","):
        plan = options.folder.parent / f".{options.folder.name}-{variant}.plan"
        result = measure([sys.executable, "-c", CHILD, str(options.folder), variant, str(plan)], options.cap)
        row = {"variant": variant, "rc": result["rc"], "wall_s": result["wall_s"],
               "peak_rss_anon_gb": round(result["peak_rss_anon"] / 1e9, 3),
               "bytes_per_weight_byte": round(result["peak_rss_anon"] / weights, 2),
               "plan_bytes": plan.stat().st_size if plan.exists() else None}
        plan.unlink(missing_ok=True)
        rows.append(row)
        print(json.dumps(row) if options.json else
              f"{variant:<28} exit {row['rc']:>3}  {row['wall_s']:>6.1f} s  RssAnon {row['peak_rss_anon_gb']:.2f} GB"
              f"  {row['bytes_per_weight_byte']:.2f}x weights  plan {row['plan_bytes']}", flush=True)
    print(f"weights: {weights / 1e9:.3f} GB ({options.folder})")


if __name__ == "__main__":
    main()
