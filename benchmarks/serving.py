"""Serving throughput through a real tritonserver on 127.0.0.1: in-flight batching vs the serial front end.

    python benchmarks/serving.py [--models small,tiny] [--concurrency 1,4,8,16] [--new-tokens 64]
                                 [--requests-per-client 1] [--markdown]

Models: `small` (dim 768, 12 layers, GQA 12/4, random init; vocabulary cut to the tiny tokenizer's 2048 so text
decodes — the issue's 79M-parameter model) and the trained `tiny`, both fp32. Each is written twice into one
server: `<m>_b` with in-flight batching (one instance, ORT on every core) and `<m>_s` with `--no-batching` (two
serial instances of one ORT thread each, the layout before batching). Closed loop: `c` client threads each send
`--requests-per-client` streamed gRPC requests one after another (a 32-token prompt, `--new-tokens` greedy tokens;
a model that emits its end-of-sequence id stops earlier: only tokens received count). Levels alternate between
the two front ends. Reported per level: aggregate generated tok/s (tokens / wall time), time to first token
p50/p99 (request sent → first token received), inter-token latency p50/p99 (gaps between token responses).
Bare ORT decode (benchmarks/cpu_decode.py's loop, batch 1, same prompt, same thread count) runs in this process
first as the single-stream yardstick, with the prefill of 8 copies of the prompt in one call (what the
scheduler runs when 8 requests arrive together: the floor of their time to first token). The server is the
tests' tritonserver 2.51 (tests/triton_serving).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "triton_serving"))  # the tests' tritonserver launcher and its venv

import tritonclient.grpc as grpcclient
from cpu_decode import one_round
from triton_server import TritonServer, ensure_venv, load_client_example

from llama_export.config import get_size
from llama_export.exporter import artifacts
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.sources import TINY_ASSET, resolve_checkpoint
from llama_export.exporter.tokenization import find_tokenizer
from llama_export.triton import protocol
from llama_export.triton.repository import write_repository
from llama_export.validate.runners import KVSession, OrtRunner

CLIENT_EXAMPLE = load_client_example()  # examples/triton_client.py

PROMPT_TOKENS = 32
MIN_REQUESTS = 4  # per level: a single client sends several in turn
MODES = {"batching": "b", "serial": "s"}


def export_model(name: str, out: Path) -> Path:
    if name == "tiny":
        return export_to_folder(resolve_checkpoint(), out, quiet=True)
    args = dataclasses.replace(get_size(name), vocab_size=2048)
    folder = export_to_folder(RandomCheckpoint(args, seed=0), out, quiet=True)
    tokenizer = find_tokenizer(TINY_ASSET)
    tokenizer.copy_to(folder)
    manifest = json.loads((folder / artifacts.MANIFEST).read_text())
    manifest.pop("files", None)
    manifest["tokenizer"] = tokenizer.manifest()
    artifacts.write_manifest(folder, manifest)  # lists the tokenizer like any file
    return folder


def prompt_text(tokenizer) -> str:
    """Text of about PROMPT_TOKENS tokens (the tiny model's training domain)."""
    words = ["The", "for", "statement", "in", "Python", "differs", "a", "bit", "from", "what", "you", "may", "be", "used", "to", "in", "C", "or", "Pascal.", "Rather", "than", "always", "iterating", "over", "an", "arithmetic", "progression", "of", "numbers,", "or", "giving", "the", "user", "the", "ability", "to", "define", "both", "the", "iteration", "step", "and", "halting", "condition"]
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        if len(tokenizer.encode(text)) >= PROMPT_TOKENS:
            return text
    return " ".join(words)


def bare_decode(folder: Path, prompt_ids: list[int], steps: int, threads: int, repeats: int = 3):
    """(prefill seconds, decode tok/s, seconds of one prefill of 8 prompts) of the better of cpu_decode's ORT
    settings and the front end's (idle threads sleep instead of spinning): medians of cpu_decode.one_round,
    batch 1, rounds alternating; the 8-prompt prefill with the better setting, after each round."""
    built = artifacts.load_manifest(folder)
    runners = [OrtRunner(built.model_path, built.args, intra_op_threads=threads),
               OrtRunner(built.model_path, built.args, intra_op_threads=threads,
                         session_config={"session.intra_op.allow_spinning": "0"})]
    prompt = np.asarray([prompt_ids])
    samples, together = [[], []], [[], []]
    for round_ in range(repeats + 1):
        for runner, kept, kept_8 in zip(runners, samples, together):
            sample = one_round(runner, prompt, steps if round_ else 4)
            start = time.perf_counter()
            KVSession(runner).prefill(np.repeat(prompt, 8, axis=0))
            if round_:
                kept.append(sample)
                kept_8.append(time.perf_counter() - start)
    medians = [(statistics.median(p for p, _ in s), statistics.median(r for _, r in s), statistics.median(t))
               for s, t in zip(samples, together)]
    print(f"bare ORT decode, spinning / sleeping threads: {medians[0][1]:.1f} / {medians[1][1]:.1f} tok/s",
          file=sys.stderr)
    return max(medians, key=lambda m: m[1])


def _inputs(prompt: str, new_tokens: int) -> list:
    """A greedy streamed request, built by the example client users are shown (temperature 0)."""
    return CLIENT_EXAMPLE._inputs(grpcclient, prompt, new_tokens, temperature=0.0, top_p=1.0, seed=0, stop=[],
                                  stream=True)


def client(url: str, model: str, prompt: str, new_tokens: int, requests: int, results: list) -> None:
    """One closed-loop client: `requests` streamed requests in turn; appends (sent, [token arrival times])."""
    arrivals: queue.Queue = queue.Queue()
    grpc = grpcclient.InferenceServerClient(url)
    grpc.start_stream(callback=lambda result, error: arrivals.put((time.perf_counter(), result, error)))
    try:
        for _ in range(requests):
            sent, times = time.perf_counter(), []
            grpc.async_stream_infer(model, _inputs(prompt, new_tokens), enable_empty_final_response=True)
            while True:
                at, result, error = arrivals.get(timeout=600)
                if error is not None:
                    raise error
                response = result.get_response()
                if response.parameters["triton_final_response"].bool_param and not response.outputs:
                    break
                times += [at] * len(result.as_numpy(protocol.TOKEN_IDS))
            results.append((sent, times))
    finally:
        grpc.stop_stream()
        grpc.close()


def run_level(url: str, model: str, prompt: str, new_tokens: int, concurrency: int, per_client: int) -> dict:
    per_client = max(per_client, -(-MIN_REQUESTS // concurrency))
    results: list = []
    threads = [threading.Thread(target=client, args=(url, model, prompt, new_tokens, per_client, results))
               for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if len(results) != concurrency * per_client:
        raise RuntimeError(f"{model} c={concurrency}: {len(results)} of {concurrency * per_client} requests ended")
    tokens = sum(len(times) for _, times in results)
    ttft = [times[0] - sent for sent, times in results if times]
    itl = [b - a for _, times in results for a, b in itertools.pairwise(times)]
    return {"tok_s": tokens / wall, "tokens": tokens, "ttft": np.percentile(ttft, [50, 99]),
            "itl": np.percentile(itl, [50, 99]) if itl else (float("nan"),) * 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,tiny")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=1, help=f"at least {MIN_REQUESTS} per level")
    parser.add_argument("--threads", type=int, default=2, help="ORT threads of the bare decode loop")
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    levels = [int(c) for c in opts.concurrency.split(",")]
    models = opts.models.split(",")
    tokenizer = find_tokenizer(TINY_ASSET)
    prompt = prompt_text(tokenizer)
    prompt_ids = tokenizer.encode(prompt)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repos, names, bare = [], [], {}
        for model in models:
            folder = export_model(model, tmp / model)
            bare[model] = bare_decode(folder, prompt_ids, opts.new_tokens, opts.threads)
            for mode, suffix in MODES.items():
                repo = write_repository(folder, tmp / f"{model}-{mode}", name=f"{model}_{suffix}",
                                        batching=mode == "batching", max_batch=max(levels))
                repos.append(repo.path)
                names.append(repo.models["generate"])
        server = TritonServer(ensure_venv(), repos, names, tmp)
        server.start(timeout=300)
        results = {}
        try:
            for model in models:
                for mode, suffix in MODES.items():  # warm-up: first ORT runs allocate
                    run_level(server.grpc_url, f"{model}_{suffix}_generate", prompt, 8, 1, 1)
                for concurrency in levels:
                    for mode, suffix in MODES.items():
                        results[model, mode, concurrency] = run_level(
                            server.grpc_url, f"{model}_{suffix}_generate", prompt, opts.new_tokens, concurrency,
                            opts.requests_per_client)
                        r = results[model, mode, concurrency]
                        print(f"{model} {mode} c={concurrency}: {r['tok_s']:.1f} tok/s", file=sys.stderr)
        finally:
            server.stop()
    report(results, bare, models, levels, len(prompt_ids), opts.markdown)


def report(results, bare, models, levels, prompt_tokens, markdown) -> None:
    header = ("model", "front end", "clients", "tok/s", "vs c=1", "batching vs serial", "TTFT p50 ms",
              "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms")
    rows = []
    for model in models:
        for mode in MODES:
            for c in levels:
                r = results[model, mode, c]
                ratio = r["tok_s"] / results[model, "serial", c]["tok_s"]
                rows.append((model, mode, str(c), f"{r['tok_s']:.1f}", f"{r['tok_s'] / results[model, mode, levels[0]]['tok_s']:.2f}x",
                             f"{ratio:.2f}x" if mode == "batching" else "", f"{r['ttft'][0] * 1e3:.0f}",
                             f"{r['ttft'][1] * 1e3:.0f}", f"{r['itl'][0] * 1e3:.1f}", f"{r['itl'][1] * 1e3:.1f}"))
    print_table(header, rows, markdown)
    print()
    goals = ("model", "bare ORT prefill ms", "8 prompts in one prefill ms", "bare ORT decode tok/s",
             "server c=1 tok/s (batching)", "server / bare", "c=8 / c=1 (batching)", "TTFT p99 bound ms (c=8)",
             "TTFT p99 ms (c=8)")
    rows = []
    for model in models:
        prefill, rate, prefill_8 = bare[model]
        single = results[model, "batching", levels[0]]["tok_s"]
        scaling = results[model, "batching", 8]["tok_s"] / single if 8 in levels else float("nan")
        # 2x the prefill plus one batch-1 decode step for each prefill that may be queued ahead (c - 1).
        bound = 2 * prefill + 7 / rate
        p99 = results[model, "batching", 8]["ttft"][1] if 8 in levels else float("nan")
        rows.append((model, f"{prefill * 1e3:.0f} ({prompt_tokens} tokens)", f"{prefill_8 * 1e3:.0f}",
                     f"{rate:.1f}", f"{single:.1f}", f"{single / rate:.2f}", f"{scaling:.2f}x",
                     f"{bound * 1e3:.0f}", f"{p99 * 1e3:.0f}"))
    print_table(goals, rows, markdown)


def print_table(header, rows, markdown) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in (header, *rows):
            print("  ".join(f"{c:>12}" for c in row))


if __name__ == "__main__":
    main()
