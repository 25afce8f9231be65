"""CPU decode by target: batch-1 prefill latency (128 tokens) and decode tokens/s in ONNX Runtime, per fusion
target, against Torch eager on the same (random-init) weights. fp32, `small` size by default.

    python benchmarks/cpu_decode.py [--size small] [--repeats 7] [--decode-steps 64] [--markdown]

Each target is exported into its own folder (llama_export.exporter.export.export_onnx(..., ExportOptions(target=...))), run
with ORT's default graph optimisations (what a deployment gets), same thread count as Torch. All runners are
loaded first and the rounds alternate over them. Numbers are medians over `--repeats` rounds; ratios are
against the `none` graph and against Torch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llama_export.config import get_size
from llama_export.exporter.checkpoints import load_model
from llama_export.exporter.export import export_onnx
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.validate.runners import KVSession, OrtRunner, TorchRunner

TARGETS = ("none", "onnx", "ort", "plugin")


def one_round(runner, prompt: np.ndarray, decode_steps: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of one prefill + greedy decode."""
    session = KVSession(runner)
    start = time.perf_counter()
    logits = session.prefill(prompt)
    prefilled = time.perf_counter()
    token = logits[:, -1].argmax(-1)
    for _ in range(decode_steps):
        token = session.step(token)[:, -1].argmax(-1)
    return prefilled - start, decode_steps / (time.perf_counter() - prefilled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/BENCHMARKS.md")
    opts = parser.parse_args()

    args = get_size(opts.size)
    checkpoint = RandomCheckpoint(args, seed=0)
    prompt = np.random.default_rng(0).integers(1, args.vocab_size, size=(1, opts.prompt_len))
    torch.set_num_threads(opts.threads)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {"torch": TorchRunner(load_model(checkpoint))}
        for target in TARGETS:
            folder = Path(tmp) / target
            folder.mkdir()
            result = export_onnx(checkpoint, folder, ExportOptions("fp32", 23, target))
            counts[target] = {k: v for k, v in result.fusion_counts.items() if "cleanup" not in k}
            runners[target] = OrtRunner(result.model_path, args, intra_op_threads=opts.threads)
        # Rounds alternate over the runners (one warm-up round first), so drift on a shared machine hits all.
        samples = {name: [] for name in runners}
        for round_ in range(opts.repeats + 1):
            for name, runner in runners.items():
                sample = one_round(runner, prompt, opts.decode_steps)
                if round_:
                    samples[name].append(sample)
        results = {name: (statistics.median(p for p, _ in xs), statistics.median(r for _, r in xs))
                   for name, xs in samples.items()}
        del runners

    _, base_rate = results["none"]
    torch_prefill, torch_rate = results["torch"]
    rows = [("runner", "prefill ms", "decode tok/s", "decode vs none", "decode vs torch", "prefill vs torch",
             "fused ops")]
    for name, (prefill, rate) in results.items():
        rows.append((name if name == "torch" else f"ort/{name}", f"{prefill * 1e3:.1f}", f"{rate:.1f}",
                     f"{rate / base_rate:.2f}x", f"{rate / torch_rate:.2f}x", f"{torch_prefill / prefill:.2f}x",
                     ", ".join(f"{k} {v}" for k, v in counts.get(name, {}).items()) or "-"))
    if opts.markdown:
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "---|" * len(rows[0]))
        for row in rows[1:]:
            print("| " + " | ".join(row) + " |")
    else:
        for row in rows:
            print("  ".join(f"{c:>16}" for c in row))


if __name__ == "__main__":
    main()
