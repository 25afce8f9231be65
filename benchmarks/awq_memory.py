"""Peak memory and time of the int4-wo AWQ export at LLaMA 7B shapes, split into the search and the export.

    python benchmarks/awq_memory.py [--layers 2] [--export-layers 32] [--samples 32] [--block-size 128] [--out DIR]

Runs the library calls `llama-export export --size 7b --precision int4-wo --target ort` makes (prepare_int4, then
export_to_folder) on random 7B weights cut to `--layers` decoder layers (the search holds one layer at a time, so
its peak should not grow with depth: compare two layer counts). The calibration text is the built-in one, tokenized
by the tiny asset's tokenizer (as for any random checkpoint). A thread samples the RssAnon (anonymous memory: what
the OOM killer counts; page cache does not count) of this process and its children (the weight-streaming child)
every 20 ms and keeps the largest value per phase (each searched layer, the export), and RssAnon right after each
layer.
Memory freed in one phase may stay in the allocator, so a phase's peak includes what earlier phases left behind.
With --export-layers the export is the full depth (7B: 32) with the searched layers' plan repeated (the search
would take hours): the export's memory and time with a plan of the real size.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

from process_memory import memory_of, process_tree  # benchmarks/process_memory.py (this script's folder)

from llama_export.config import SIZES
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.options import ExportOptions, prepare_int4
from llama_export.exporter.random_init import RandomCheckpoint


def rss_anon() -> int:
    """RssAnon of this process and its children: the export streams 7B-size weights from a child process."""
    return sum(memory_of(pid)[0] for pid in process_tree(os.getpid()))


class PhasePeaks:
    """The largest RssAnon seen while each named phase ran."""

    def __init__(self, interval: float = 0.02):
        self.phase, self.peaks, self.interval = "start", {}, interval
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            value = rss_anon()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), value)
            time.sleep(self.interval)


def repeat_plan(plan, searched: int, layers: int) -> None:
    """Give layers searched..layers-1 the searched layers' factors and clip steps, in turn (same shapes): the
    export then carries a plan of the full model's size. Only for measuring the export's memory and time; the
    result is not a model anyone should use."""
    for table in (plan.columns, plan.rows, plan.clip_steps, plan.alphas):
        for name in [n for n in table if n.startswith("layers.")]:
            layer, rest = name.split(".", 2)[1:]
            for target in range(int(layer) + searched, layers, searched):
                table[f"layers.{target}.{rest}"] = table[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=None, help="calibration windows (default: the export's)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--export-layers", type=int, default=None,
                        help="export this many layers, repeating the searched layers' plan (memory and time only)")
    parser.add_argument("--out", default="/tmp/awq-7b", help="export folder (replaced if it is a llama-export output)")
    cli = parser.parse_args()

    peaks = PhasePeaks()
    peaks.peaks["start"] = rss_anon()
    checkpoint = RandomCheckpoint(SIZES["7b"].replace(n_layers=cli.layers), 0)
    started = time.perf_counter()
    peaks.phase = "search layer 1"
    layer_ends = []

    def next_layer(done: int, total: int) -> None:
        layer_ends.append(round(rss_anon() / 1e9, 3))
        peaks.phase = f"search layer {done + 1}" if done < total else "search end"

    quant = prepare_int4(checkpoint, samples=cli.samples, block_size=cli.block_size, int4_method="awq",
                         progress=next_layer)
    searched = time.perf_counter()
    if cli.export_layers is not None:
        checkpoint = RandomCheckpoint(SIZES["7b"].replace(n_layers=cli.export_layers), 0)
        repeat_plan(quant.awq, cli.layers, cli.export_layers)
    peaks.phase = "export"
    export_to_folder(checkpoint, cli.out, ExportOptions(precision="int4-wo", target="ort", quantization=quant),
                     quiet=True)
    done = time.perf_counter()
    time.sleep(2 * peaks.interval)
    print(json.dumps({"layers": cli.layers, "calibration": quant.awq.calibration,
                      "peak_rss_anon_gb": {k: round(v / 1e9, 3) for k, v in peaks.peaks.items()},
                      "rss_anon_gb_after_each_layer": layer_ends,
                      "search_s": round(searched - started, 1), "export_s": round(done - searched, 1),
                      "search_s_per_layer": round((searched - started) / cli.layers, 1)}, indent=1))


if __name__ == "__main__":
    main()
