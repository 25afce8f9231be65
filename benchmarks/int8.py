"""INT8 on the tiny model: held-out perplexity, greedy agreement and ORT CPU decode tokens/s per precision.

    python benchmarks/int8.py [--windows N] [--decode-steps 64] [--repeats 5] [--target none]

Variants: the Torch fp32 reference, the fp32 ONNX export, int8-wo and int8 (SmoothQuant W8A8, α 0.5, 32
calibration windows of the training text), plus int8-wo with fp16 as the float dtype. Perplexity is
validate.heldout.windowed_perplexity (metrics.perplexity over the asset's protocol: non-overlapping 256-token
windows each starting with BOS, the whole held-out split unless --windows). Agreement: over 8 fixed prompts, the
first 32 greedy tokens position by position (free-running), and top-1 along the reference's greedy path
(forced). Decode: batch 1, 16-token prompt, median tokens/s over --repeats runs after a warm-up, ORT default
graph optimisations; Torch runs with one thread (two oversubscribe these 2 shared cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llama_export.assets.corpus import corpus
from llama_export.exporter.checkpoints import load_model
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.sources import TINY_ASSET, resolve_checkpoint
from llama_export.exporter.tokenization import load_tokenizer
from llama_export.validate.heldout import (
    forced_agreement,
    greedy_agreement,
    heldout_windows,
    windowed_perplexity,
)
from llama_export.validate.runners import KVSession, OrtRunner, TorchRunner

PROMPTS = ["The for statement", "The import statement is", "A class definition", "Return the number of",
           "The with statement", "If the argument is", "This module provides", "Raise an exception"]
VARIANTS = [("fp32", "fp32", None), ("int8-wo", "int8-wo", None), ("int8", "int8", None),
            ("int8-wo + fp16", "int8-wo", "fp16")]


def decode_rate(runner, prompt: np.ndarray, steps: int, repeats: int) -> float:
    rates = []
    for round_ in range(repeats + 1):
        session = KVSession(runner)
        token = session.prefill(prompt)[:, -1].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            token = session.step(token)[:, -1].argmax(-1)
        if round_:  # round 0 warms up
            rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=None, help="held-out windows (default: all)")
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", default="none")
    opts = parser.parse_args()
    torch.set_num_threads(1)

    ckpt = resolve_checkpoint()
    tok = load_tokenizer(TINY_ASSET)
    windows = heldout_windows(tok.encode(corpus()[1], bos=False), tok.bos_id, limit=opts.windows)
    prompts = [tok.encode(p) for p in PROMPTS]
    decode_prompt = np.asarray([tok.encode(corpus()[1][:400])[:16]])
    reference = TorchRunner(load_model(ckpt))
    ref_ppl = windowed_perplexity(reference, windows)
    rows = [("Torch fp32 (reference)", ref_ppl, "", "", decode_rate(reference, decode_prompt, opts.decode_steps,
                                                                     opts.repeats), "", "")]
    with tempfile.TemporaryDirectory() as tmp:
        for label, precision, float_dtype in VARIANTS:
            start = time.perf_counter()
            folder = export_to_folder(ckpt, Path(tmp) / label.replace(" ", ""), ExportOptions(
                precision, target=opts.target, float_dtype=float_dtype), quiet=True)
            seconds = time.perf_counter() - start
            size = (folder / "model.onnx.data").stat().st_size / 2**20
            runner = OrtRunner(folder / "model.onnx", ckpt.args)
            ppl = windowed_perplexity(runner, windows)
            rows.append((f"ONNX {label}", ppl, f"{greedy_agreement(reference, runner, prompts):.3f}",
                         f"{forced_agreement(reference, runner, prompts):.3f}",
                         decode_rate(runner, decode_prompt, opts.decode_steps, opts.repeats),
                         f"{size:.1f}", f"{seconds:.1f}"))
            print(f"done {label}", flush=True)

    print(f"\ntiny model, {len(windows)} held-out windows ({sum(len(w) - 1 for w in windows)} tokens), "
          f"target {opts.target}, torch {torch.__version__}\n")
    print("| variant | held-out ppl | Δ vs Torch | greedy agreement (free) | top-1 on ref path | "
          "ORT decode tok/s | weights MiB | export s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ppl, free, forced, rate, size, seconds in rows:
        print(f"| {name} | {ppl:.3f} | {100 * (ppl / ref_ppl - 1):+.3f} % | {free} | {forced} | {rate:.0f} | "
              f"{size} | {seconds} |")


if __name__ == "__main__":
    main()
