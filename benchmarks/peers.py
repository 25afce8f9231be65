"""llama-export against its peers on CPU: export cost, ORT prefill latency, batch-1 decode tokens/s, logits.

    python benchmarks/peers.py [--size small] [--repeats 5] [--export-repeats 2] [--work out/peers]
                               [--prompt-len 128] [--new-tokens 128] [--threads 2] [--markdown]

One command, every number in the table comes from its output:
1. Same weights for every tool: a random `transformers.LlamaForCausalLM` of the size (seed 0, HF's own init),
   written with `save_pretrained` (safetensors) - the one format every tool reads.
2. Exports, each a child process (wall time, peak RSS from os.wait4), alternating between tools, repeated:
   llama-export per target (fp32) and int8-wo (lm_head included, like genai's int8/int4), HF Optimum
   (`text-generation-with-past`), onnxruntime-genai's model builder (CPU; fp32, int8, int4). Peers run from
   their own venvs (benchmarks/peer_tools.py), never the project's environment.
3. Runtime, each measurement a fresh child process, rounds alternating over every configuration: prefill of a
   `--prompt-len` prompt, then `--new-tokens` decode steps fed the reference's greedy tokens (teacher-forced,
   so every runner computes the same steps), batch 1, `--threads` intra-op threads. Every ONNX model runs in
   the same ONNX Runtime (CPU) through the same loop (`OnnxDecoder`: feeds chosen by input name). Torch eager
   rows: our reference model and HF LlamaForCausalLM. genai's own Generator API is a row too (greedy, its own
   tokens; prefill = append_tokens).
4. Logits vs HF Torch fp32 at every position: max |Δ| and top-1 agreement.
5. Roofline: decode reads every weight once per token (the embedding table only one row) plus the KV cache;
   bytes/token over the GEMV bandwidth measured here (one ORT MatMul [1, 4096] x [4096, 32768] fp32, 512 MB,
   same threads) is the tokens/s a memory-bound decoder reaches streaming its weights at that rate.
Medians over the repeats; ratios are between medians of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# --- the child side: only numpy + onnxruntime at import time, so the genai venv's python can run it too ---


class OnnxDecoder:
    """Prefill + decode for any exported LLaMA with KV-cache I/O (ours, Optimum's, genai's), by input name:
    input_ids, attention_mask (all ones: batch 1, no padding), position_ids when the graph has them, and
    past_key_values.* fed from present.* of the previous step."""

    def __init__(self, path: str, threads: int, kv_heads: int, head_dim: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        self.empty = {}
        for name in self.past_names:  # [batch, kv_heads, past, head_dim] (genai names head_dim symbolically)
            self.empty[name] = np.zeros((1, kv_heads, 0, head_dim), dtype=dtypes[self.inputs[name].type])

    def start(self) -> None:
        self.past, self.length = dict(self.empty), 0

    def forward(self, ids: np.ndarray) -> np.ndarray:
        total = self.length + ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64), **self.past}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(self.length, total, dtype=np.int64)[None]
        out = dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
        self.past = {n: out[n.replace("past_key_values.", "present.", 1)] for n in self.past_names}
        self.length = total
        return out["logits"][0].astype(np.float32)


class TorchDecoder:
    """Our reference model (kind torch) or HF LlamaForCausalLM (kind hf), eager, with their KV caches."""

    def __init__(self, hf_dir: str, kind: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.kind = torch, kind
        if kind == "hf":
            from transformers import LlamaForCausalLM

            self.model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        else:
            from llama_export.exporter.checkpoints import load_model, open_checkpoint
            from llama_export.validate.runners import KVSession, TorchRunner

            self.session_type, self.runner = KVSession, TorchRunner(load_model(open_checkpoint(hf_dir)))

    def start(self) -> None:
        if self.kind == "hf":
            from transformers import DynamicCache

            self.cache = DynamicCache()
        else:
            self.session = self.session_type(self.runner)

    def forward(self, ids: np.ndarray) -> np.ndarray:
        if self.kind != "hf":
            step = self.session.prefill if self.session.length == 0 else self.session.step
            return step(ids)[0].astype(np.float32)
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.from_numpy(ids.astype(np.int64)), past_key_values=self.cache,
                             use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0].float().numpy()


def run_decoder(decoder, prompt: np.ndarray, forced: np.ndarray, reference: np.ndarray | None) -> dict:
    """One warm-up pass, then a timed one: prefill seconds, decode tokens/s, logits vs the reference."""
    for timed in (False, True):
        decoder.start()
        start = time.perf_counter()
        logits = [decoder.forward(prompt[None])]
        prefilled = time.perf_counter()
        for token in (forced if timed else forced[:4]):
            logits.append(decoder.forward(np.array([[token]])))
        done = time.perf_counter()
    result = {"prefill_s": prefilled - start, "decode_tok_s": len(forced) / (done - prefilled)}
    if reference is not None:
        got = np.concatenate(logits)
        result["max_abs_logit_diff"] = float(np.abs(got - reference).max())
        result["top1_agreement"] = float((got.argmax(-1) == reference.argmax(-1)).mean())
    return result


def run_genai_generator(folder: str, prompt: np.ndarray, reference_tokens: np.ndarray, threads: int) -> dict:
    """genai's own Generator (greedy): prefill = append_tokens(prompt), then one generate_next_token per token."""
    import onnxruntime_genai as og

    config = og.Config(folder)
    config.clear_providers()
    model = og.Model(config)
    n = len(reference_tokens)
    for timed in (False, True):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + (n if timed else 4), do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt.astype(np.int32))
        prefilled = time.perf_counter()
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        done = time.perf_counter()
    # The first new token comes out of the prefill; `n` decode steps produced the rest.
    steps = max(1, len(tokens) - 1)
    agree = float(np.mean(np.array(tokens[:n]) == reference_tokens[:len(tokens[:n])]))
    return {"prefill_s": prefilled - start, "decode_tok_s": steps / (done - prefilled),
            "greedy_agreement": agree, "threads_note": f"genai default threading ({threads} cores)"}


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["onnx", "torch", "hf", "genai-generator"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True, help="npz: prompt, forced, reference logits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=0)
    parser.add_argument("--head-dim", type=int, default=0)
    opts = parser.parse_args(argv)
    data = np.load(opts.inputs)
    prompt, forced, reference = data["prompt"], data["forced"], data["reference"]
    if opts.kind == "genai-generator":
        result = run_genai_generator(opts.model, prompt, forced, opts.threads)
    else:
        decoder = (OnnxDecoder(opts.model, opts.threads, opts.kv_heads, opts.head_dim) if opts.kind == "onnx"
                   else TorchDecoder(opts.model, opts.kind, opts.threads))
        result = run_decoder(decoder, prompt, forced, reference[: len(prompt) + len(forced)])
    print("RESULT " + json.dumps(result), flush=True)


if len(sys.argv) > 1 and sys.argv[1] == "--child":
    child_main(sys.argv[2:])
    sys.exit(0)

# --- the orchestrator ------------------------------------------------------------------------------------------

sys.path.insert(0, str(HERE))
from peer_tools import (
    child_env,
    ensure_peer_venv,
    export_genai,
    export_optimum,
    measure_child,
    venv_python,
)
from roofline import gemv_bandwidth, weight_bytes_per_token

OURS = [("llama-export fp32 none", "fp32", "none"), ("llama-export fp32 onnx", "fp32", "onnx"),
        ("llama-export fp32 ort", "fp32", "ort"), ("llama-export fp32 plugin", "fp32", "plugin"),
        ("llama-export int8-wo none", "int8-wo", "none"), ("llama-export int8-wo ort", "int8-wo", "ort"),
        ("llama-export int4-wo none", "int4-wo", "none"), ("llama-export int4-wo ort", "int4-wo", "ort")]
# int4-wo rows: RTN at the default block size 128 (random weights: AWQ's search changes values, not the graph or
# its speed; the HF folder has no tokenizer.model to calibrate with), lm_head quantized like genai's int4.
GENAI = [("genai fp32", "fp32"), ("genai int8", "int8"), ("genai int4", "int4")]


def make_hf_checkpoint(size: str, folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_export.config import get_size

    a = get_size(size)
    config = LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.hidden_dim,
                         num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads,
                         rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, max_position_embeddings=a.max_seq_len,
                         tie_word_embeddings=False, torch_dtype="float32")
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)


def export_ours(hf_dir: Path, out: Path, precision: str, target: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "llama_export.cli", "export", "--checkpoint", hf_dir, "--precision", precision,
           "--target", target, "--out", out, "--quiet",
           *(["--quantize-lm-head"] if precision.startswith(("int8", "int4")) else []),
           *(["--int4-method", "rtn"] if precision == "int4-wo" else [])]
    log = out.parent / f"{out.name}.log"
    wall, rss, rc = measure_child(cmd, log, 3600, dict(os.environ))
    if rc:
        raise RuntimeError(f"llama-export export failed: {log.read_text()[-2000:]}")
    return {"wall_s": wall, "peak_rss_bytes": rss, "model_path": out / "model.onnx"}


def reference_inputs(hf_dir: Path, prompt_len: int, new_tokens: int, vocab: int, path: Path) -> None:
    """Prompt (random ids), HF's greedy continuation (the forced tokens), and HF's fp32 logits for all of it."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    prompt = np.random.default_rng(0).integers(1, vocab, size=prompt_len)
    with torch.no_grad():
        ids = torch.from_numpy(prompt)[None]
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                   do_sample=False, min_new_tokens=new_tokens, eos_token_id=None,
                                   pad_token_id=0)[0, prompt_len:].numpy()
        logits = model(torch.from_numpy(np.concatenate([prompt, generated]))[None]).logits[0].numpy()
    np.savez(path, prompt=prompt, forced=generated, reference=logits[: prompt_len + new_tokens])


def run_child(python: Path, kind: str, model: Path, inputs: Path, threads: int, env: dict, args) -> dict:
    cmd = [str(python), str(HERE / "peers.py"), "--child", "--kind", kind, "--model", str(model),
           "--inputs", str(inputs), "--threads", str(threads), "--kv-heads", str(args.kv_heads),
           "--head-dim", str(args.head_dim)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"{kind} {model}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def versions(venvs: Path) -> dict:
    from importlib import metadata

    out = {p: metadata.version(p) for p in ("torch", "onnx", "onnxruntime", "onnxscript", "transformers")}
    out["llama-export"] = metadata.version("llama-export")
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    for kind, packages in (("optimum", ["optimum-onnx", "optimum", "transformers"]),
                           ("genai", ["onnxruntime-genai", "onnxruntime", "transformers"])):
        done = subprocess.run([venv_python(venvs, kind), "-c", code, *packages], capture_output=True, text=True,
                              env=child_env(), check=True)
        out[f"{kind} venv"] = json.loads(done.stdout)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--repeats", type=int, default=5, help="runtime rounds (each a fresh child per config)")
    parser.add_argument("--export-repeats", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("out/peers"))
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table for docs/BENCHMARKS.md")
    parser.add_argument("--only", default=None,
                        help="comma-separated substrings: keep only the configurations whose name has one")
    parser.add_argument("--reuse-exports", action="store_true",
                        help="debugging: keep models already in --work (no export numbers for them)")
    opts = parser.parse_args()

    from llama_export.config import get_size

    args = get_size(opts.size)
    work = opts.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    venvs = ensure_peer_venv()
    hf_dir = work / "hf"
    if not (hf_dir / "config.json").exists():
        make_hf_checkpoint(opts.size, hf_dir)
    inputs = work / "inputs.npz"
    reference_inputs(hf_dir, opts.prompt_len, opts.new_tokens, args.vocab_size, inputs)

    exports = {name: (lambda p=p, t=t, name=name: export_ours(hf_dir, work / name.replace(" ", "-"), p, t))
               for name, p, t in OURS}
    exports["optimum fp32"] = lambda: export_optimum(hf_dir, work / "optimum", venvs, overwrite=True)
    exports.update({name: (lambda p=p, name=name: export_genai(hf_dir, work / name.replace(" ", "-"), venvs, p,
                                                                overwrite=True)) for name, p in GENAI})
    if opts.only:
        keep = opts.only.split(",")
        exports = {name: f for name, f in exports.items() if any(k in name for k in keep)}
    export_runs: dict[str, list[dict]] = {name: [] for name in exports}
    if opts.reuse_exports:
        for name in exports:
            folder = work / ("optimum" if name == "optimum fp32" else name.replace(" ", "-"))
            if (folder / "model.onnx").exists():
                export_runs[name].append({"model_path": folder / "model.onnx"})
                exports[name] = None
    for round_ in range(opts.export_repeats):
        for name, export in exports.items():
            if export is None:
                continue
            result = export()
            export_runs[name].append(result)
            print(f"export round {round_} {name}: {result['wall_s']:.1f} s, "
                  f"{result['peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr, flush=True)

    env = child_env({"PYTHONPATH": str(HERE.parent)})
    genai_python = venv_python(venvs, "genai")
    runs = {name: (sys.executable, "onnx", export_runs[name][-1]["model_path"]) for name in exports}
    if "genai fp32" in exports:
        runs["genai fp32 (og.Generator)"] = (genai_python, "genai-generator",
                                             export_runs["genai fp32"][-1]["model_path"].parent)
    runs["torch eager (llama-export reference)"] = (sys.executable, "torch", hf_dir)
    runs["torch eager (HF LlamaForCausalLM)"] = (sys.executable, "hf", hf_dir)
    if opts.only:
        runs = {name: run for name, run in runs.items() if any(k in name for k in keep)}
    runtime: dict[str, list[dict]] = {name: [] for name in runs}
    for round_ in range(opts.repeats):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # alternate, and flip the order
        for name in order:
            python, kind, model = runs[name]
            result = run_child(Path(python), kind, Path(model), inputs, opts.threads, env, args)
            runtime[name].append(result)
            print(f"round {round_} {name}: prefill {result['prefill_s'] * 1e3:.0f} ms, "
                  f"decode {result['decode_tok_s']:.1f} tok/s", file=sys.stderr, flush=True)

    bandwidth = gemv_bandwidth(opts.threads)
    kv_bytes = 2 * args.n_layers * args.kv_heads * args.head_dim * 4 * (opts.prompt_len + opts.new_tokens // 2)
    rows = []
    for name in runs:
        r = runtime[name]
        row = {"name": name, "prefill_ms": statistics.median(x["prefill_s"] for x in r) * 1e3,
               "decode_tok_s": statistics.median(x["decode_tok_s"] for x in r),
               "decode_runs": [round(x["decode_tok_s"], 2) for x in r]}
        for key in ("max_abs_logit_diff", "top1_agreement", "greedy_agreement"):
            if key in r[0]:
                row[key] = r[0][key]  # deterministic: identical in every round
        source = name.replace(" (og.Generator)", "")
        if source in export_runs and "wall_s" in export_runs[source][-1]:
            e = [x for x in export_runs[source] if "wall_s" in x]
            row["export_s"] = statistics.median(x["wall_s"] for x in e)
            row["export_peak_rss_gb"] = statistics.median(x["peak_rss_bytes"] for x in e) / 1e9
        if source in export_runs:
            row["bytes_per_token"] = weight_bytes_per_token(export_runs[source][-1]["model_path"]) + kv_bytes
            row["roofline_tok_s"] = bandwidth * 1e9 / row["bytes_per_token"]
        rows.append(row)
    summary = {"machine": machine(), "versions": versions(venvs), "gemv_bandwidth_gb_s": bandwidth,
               "size": opts.size, "params": args.n_params, "prompt_len": opts.prompt_len,
               "new_tokens": opts.new_tokens, "threads": opts.threads, "repeats": opts.repeats,
               "export_repeats": opts.export_repeats, "rows": rows}
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if opts.markdown:
        print(markdown(summary))


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.machine()}"


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    by = {r["name"]: r for r in rows}
    peers = [r for r in rows if r["name"].startswith(("optimum", "genai")) and "fp32" in r["name"]]
    # --only may leave out any reference row: its ratio column is then empty instead of a crash after the run
    best_peer = max(peers, key=lambda r: r["decode_tok_s"], default=None)
    torch_eager = by.get("torch eager (HF LlamaForCausalLM)")
    own_fp32 = max((r for r in rows if r["name"].startswith("llama-export fp32")), key=lambda r: r["decode_tok_s"],
                   default=None)

    def ratio(r: dict, reference: dict | None) -> str:
        return f"{r['decode_tok_s'] / reference['decode_tok_s']:.2f}x" if reference else ""

    head = ("| configuration | export s | export peak RSS GB | prefill ms | decode tok/s | vs best fp32 peer | "
            "vs torch eager (HF) | vs own best fp32 | roofline tok/s | % of roofline | max abs Δlogit | top-1 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        def f(key: str, spec: str, r: dict = r) -> str:
            return format(r[key], spec) if key in r else ""

        agree = f("top1_agreement", ".3f") or (f"greedy {r['greedy_agreement']:.3f}" if "greedy_agreement" in r
                                               else "")
        lines.append(
            f"| {r['name']} | {f('export_s', '.1f')} | {f('export_peak_rss_gb', '.2f')} | {r['prefill_ms']:.0f} | "
            f"{r['decode_tok_s']:.1f} | {ratio(r, best_peer)} | {ratio(r, torch_eager)} | "
            f"{ratio(r, own_fp32)} | {f('roofline_tok_s', '.1f')} | "
            + (f"{100 * r['decode_tok_s'] / r['roofline_tok_s']:.0f} %" if "roofline_tok_s" in r else "")
            + f" | {f('max_abs_logit_diff', '.2e')} | {agree} |")
    if "genai int4" in by:  # the INT4 comparison: same checkpoint, same ORT, same run
        lines += [f"\n{r['name']}: decode {ratio(r, by['genai int4'])} genai int4"
                  + (f", {ratio(r, own_fp32)} own best fp32 ({own_fp32['name']})" if own_fp32 else "")
                  for r in rows if r["name"].startswith("llama-export int4")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
