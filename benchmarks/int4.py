"""INT4 weight-only on the tiny model: held-out perplexity of RTN and AWQ per block size, through ONNX Runtime.

    python benchmarks/int4.py [--windows N] [--samples 32] [--blocks 32,128] [--target none]

Variants: the Torch fp32 reference, then int4-wo with RTN and with AWQ (calibrated on `--samples` windows of the
tiny model's training text, graphs/awq.py) at each block size. Each export runs in ONNX Runtime twice: with the
exact weight-only setting (validate.runners.WEIGHT_ONLY_INT8: MatMulNBits at accuracy level 0, the graph's own
math) and with ORT's default (accuracy level 4: MatMulNBits quantizes the activations to int8 per block, what a
deployment gets unless it asks otherwise). Perplexity is validate.heldout.windowed_perplexity (the asset's
protocol: non-overlapping 256-token windows starting with BOS, the whole held-out split unless --windows); forced
top-1 agreement over 8 prompts along the reference's greedy path. Also timed: the AWQ search (the calibration
step of the export) and the whole export.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from llama_export.assets.corpus import corpus
from llama_export.exporter.checkpoints import load_model
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.options import ExportOptions, prepare_int4
from llama_export.exporter.sources import TINY_ASSET, resolve_checkpoint
from llama_export.exporter.tokenization import load_tokenizer
from llama_export.validate.heldout import forced_agreement, heldout_windows, windowed_perplexity
from llama_export.validate.runners import WEIGHT_ONLY_INT8, OrtRunner, TorchRunner

PROMPTS = ["The for statement", "The import statement is", "A class definition", "Return the number of",
           "The with statement", "If the argument is", "This module provides", "Raise an exception"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=None, help="held-out windows (default: all)")
    parser.add_argument("--samples", type=int, default=32, help="AWQ calibration windows")
    parser.add_argument("--blocks", default="32,128")
    parser.add_argument("--target", default="none")
    opts = parser.parse_args()
    torch.set_num_threads(1)  # two threads oversubscribe these 2 shared cores

    ckpt = resolve_checkpoint()
    tok = load_tokenizer(TINY_ASSET)
    windows = heldout_windows(tok.encode(corpus()[1], bos=False), tok.bos_id, limit=opts.windows)
    prompts = [tok.encode(p) for p in PROMPTS]
    reference = TorchRunner(load_model(ckpt))
    ref_ppl = windowed_perplexity(reference, windows)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for block in map(int, opts.blocks.split(",")):
            for method in ("rtn", "awq"):
                start = time.perf_counter()
                quant = prepare_int4(ckpt, block_size=block, int4_method=method, samples=opts.samples)
                search = time.perf_counter() - start
                folder = export_to_folder(ckpt, Path(tmp) / f"{method}{block}", ExportOptions(
                    "int4-wo", target=opts.target, quantization=quant), quiet=True)
                seconds = time.perf_counter() - start
                size = (folder / "model.onnx.data").stat().st_size / 2**20
                exact = OrtRunner(folder / "model.onnx", ckpt.args, session_config=WEIGHT_ONLY_INT8)
                default = OrtRunner(folder / "model.onnx", ckpt.args)
                rows.append((f"int4-wo {method.upper()} block {block}", windowed_perplexity(exact, windows),
                             windowed_perplexity(default, windows), forced_agreement(reference, exact, prompts),
                             size, search, seconds))
                print(f"done {rows[-1][0]}", flush=True)

    print(f"\ntiny model, {len(windows)} held-out windows ({sum(len(w) - 1 for w in windows)} tokens), target "
          f"{opts.target}, AWQ on {opts.samples} calibration windows, torch {torch.__version__}\n")
    print(f"Torch fp32 reference: held-out perplexity {ref_ppl:.3f}\n")
    print("| variant | ppl (exact weight-only) | Δ vs Torch | ppl (ORT default, int8 activations) | Δ vs Torch | "
          "top-1 on ref path | weights MiB | AWQ search s | export s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, exact, default, top1, size, search, seconds in rows:
        print(f"| {name} | {exact:.3f} | {100 * (exact / ref_ppl - 1):+.2f} % | {default:.3f} | "
              f"{100 * (default / ref_ppl - 1):+.2f} % | {top1:.3f} | {size:.1f} | {search:.1f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
