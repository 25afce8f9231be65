"""Train the built-in tiny model (llama_export/assets/tiny) from scratch on CPU, deterministically.

    python tools/train_tiny.py [--out llama_export/assets/tiny] [--steps N]

Corpus: llama_export.assets.corpus (Python's own help topics and stdlib docstrings, so nothing is downloaded).
Writes tokenizer.model (SentencePiece BPE, LLaMA conventions), params.json + model.safetensors (fp16, our format)
and README.md with the measured numbers. A fixed step count, seeds and thread count make reruns repeat the
weights on the same machine and Python; the default budget is about 10 minutes of training on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import platform
import sys
import time
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from llama_export.assets.corpus import MODULES, corpus
from llama_export.config import SIZES
from llama_export.exporter.checkpoints import SafetensorsCheckpoint, load_model, save_checkpoint
from llama_export.model import Transformer

PROMPTS = ("The for statement", "The import statement")


def train_tokenizer(text: str, vocab_size: int) -> bytes:
    """SentencePiece BPE with Meta's LLaMA trainer settings, scaled down to `vocab_size`."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in text.split("\n") if line.strip()]), model_writer=writer,
        vocab_size=vocab_size, model_type="bpe", byte_fallback=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity",  # LLaMA keeps text as is; newlines become <0x0A> byte tokens
        allow_whitespace_only_pieces=True,  # code indentation becomes a few "▁▁▁▁" pieces
        character_coverage=0.9999, max_sentence_length=1 << 16, num_threads=1, minloglevel=2)  # 1 thread: same model
    return writer.getvalue()


def init_weights(model: Transformer) -> None:
    """GPT-2 style init: nn.Embedding's N(0, 1) and Linear's fan-in default train badly at this scale."""
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * model.args.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
            torch.nn.init.normal_(p, std=std)  # residual-branch outputs scaled down so the stream stays O(1)


def add_dropout(model: Transformer, p: float) -> None:
    """Dropout on every residual branch while training. The reference model has none (it is what gets exported),
    so hooks add it here: the corpus is seen ~8 times, and without dropout the model memorises it."""
    def hook(module, inputs, output):
        if not module.training or p == 0:
            return output
        return (F.dropout(output[0], p), *output[1:]) if isinstance(output, tuple) else F.dropout(output, p)

    for layer in model.layers:
        layer.attention.register_forward_hook(hook)
        layer.feed_forward.register_forward_hook(hook)


def forward_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    batch, seq = ids.shape
    positions = torch.arange(seq).expand(batch, seq)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    return model(ids, positions, mask, *model.empty_cache(batch))[0]


def windows(tokens: list[int], seq: int, bos: int) -> list[torch.Tensor]:
    """Non-overlapping [BOS] + (seq - 1)-token windows covering every token once (the last may be shorter)."""
    step = seq - 1
    return [torch.tensor([[bos, *tokens[i:i + step]]]) for i in range(0, len(tokens), step)]


@torch.inference_mode()
def perplexity(model: Transformer, tokens: list[int], seq: int, bos: int) -> float:
    """Token-level: exp of the mean next-token NLL over every token of `tokens` (each window starts from BOS)."""
    nll, count = 0.0, 0
    for w in windows(tokens, seq, bos):
        logits = forward_logits(model, w)
        nll += F.cross_entropy(logits[0, :-1], w[0, 1:], reduction="sum").item()
        count += w.shape[1] - 1
    return math.exp(nll / count)


@torch.inference_mode()
def greedy(model: Transformer, sp: spm.SentencePieceProcessor, prompt: str, new_tokens: int = 48) -> str:
    """Greedy continuation through the KV cache, the way the exported graphs run (prefill, then 1-token steps)."""
    ids = [sp.bos_id(), *sp.encode(prompt)]
    x, past, out = torch.tensor([ids]), model.empty_cache(1), []
    for _ in range(new_tokens):
        total = len(ids) + len(out)
        positions = torch.arange(total - x.shape[1], total)[None]
        logits, *past = model(x, positions, torch.ones(1, total, dtype=torch.int64), *past)
        out.append(int(logits[0, -1].argmax()))
        if out[-1] == sp.eos_id():
            break
        x = torch.tensor([[out[-1]]])
    return prompt + sp.decode(ids[1:] + out)[len(sp.decode(ids[1:])):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "llama_export" / "assets" / "tiny")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (fixed, so runs repeat)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence, BOS included")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--dropout", type=float, default=0.1, help="on residual branches, training only")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(opts.seed)
    torch.set_num_threads(2)
    args = SIZES["tiny"]

    train_text, heldout_text = corpus()
    model_proto = train_tokenizer(train_text, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    train_ids, heldout_ids = sp.encode(train_text), sp.encode(heldout_text)
    bos = sp.bos_id()
    print(f"corpus: train {len(train_text):,} chars / {len(train_ids):,} tokens, held-out {len(heldout_text):,} "
          f"chars / {len(heldout_ids):,} tokens")

    model = Transformer(args)
    init_weights(model)
    add_dropout(model, opts.dropout)
    decay = [p for p in model.parameters() if p.dim() == 2]  # no weight decay on RMSNorm gains
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=opts.lr, betas=(0.9, 0.95))
    warmup = max(1, opts.steps // 20)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine down to 10% of the peak
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, opts.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # Random offsets (not fixed chunks) so each epoch sees different cuts; a seeded generator keeps them fixed.
    data, generator = torch.tensor(train_ids), torch.Generator().manual_seed(opts.seed)
    train_start, losses = time.perf_counter(), []
    for step in range(opts.steps):
        offsets = torch.randint(0, len(data) - opts.seq + 1, (opts.batch,), generator=generator)
        chunks = torch.stack([data[o:o + opts.seq - 1] for o in offsets.tolist()])
        ids = torch.cat([torch.full((opts.batch, 1), bos), chunks], dim=1)  # every sequence starts with BOS
        logits = forward_logits(model, ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, args.vocab_size), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == opts.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {schedule.get_last_lr()[0]:.2e}  "
                  f"{time.perf_counter() - train_start:6.0f} s", flush=True)
        if step % 300 == 299:  # a cheap over-fitting check, printed only (no early stopping: runs must repeat)
            model.eval()
            print(f"  held-out perplexity {perplexity(model, heldout_ids, opts.seq, bos):.2f}", flush=True)
            model.train()
    train_seconds = time.perf_counter() - train_start
    final_loss = sum(losses[-50:]) / len(losses[-50:])

    save_checkpoint(model.state_dict(), args, opts.out, dtype=torch.float16)  # fp16: 8 MB instead of 16 MB
    (opts.out / "tokenizer.model").write_bytes(model_proto)
    stored = load_model(SafetensorsCheckpoint(opts.out))  # evaluate what ships: fp16 weights, run in fp32
    heldout_ppl = perplexity(stored, heldout_ids, opts.seq, bos)
    samples = {prompt: greedy(stored, sp, prompt) for prompt in PROMPTS}
    print(f"train loss (mean of last 50 steps) {final_loss:.3f}, held-out perplexity {heldout_ppl:.2f}, "
          f"training {train_seconds / 60:.1f} min")
    for prompt, text in samples.items():
        print(f"--- {prompt!r}\n{text}")

    corpus_sha = hashlib.sha256((train_text + heldout_text).encode()).hexdigest()[:16]
    fence = "```"
    sample_md = "\n\n".join(f"{fence}text\n{text}\n{fence}" for text in samples.values())
    readme = f"""# tiny: the built-in model

A {args.n_params / 1e6:.1f}M-parameter LLaMA-architecture model (`SIZES["tiny"]`) trained from scratch on CPU on
Python's own documentation. It is small enough to ship with the package and to export, build and compare in
seconds, and trained enough to write English-like text, so a broken export shows up as garbage.
It knows nothing but the help text; it is a test fixture, not a useful language model.

| | |
|---|---|
| architecture | dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads, {args.kv_heads} kv heads (GQA), head_dim {args.head_dim}, SwiGLU hidden {args.hidden_dim}, RMSNorm eps {args.norm_eps}, RoPE theta {args.rope_theta:g}, max_seq_len {args.max_seq_len} |
| parameters | {args.n_params:,} (untied embedding and output) |
| tokenizer | SentencePiece BPE, vocab {sp.get_piece_size()}, byte fallback, unk 0 / bos {sp.bos_id()} / eos {sp.eos_id()} / no pad, LLaMA settings |
| corpus | `llama_export.assets.corpus.corpus()`: `pydoc_data.topics` help topics + docstrings of {len(MODULES)} stdlib modules (Python {platform.python_version()}, sha256 {corpus_sha}...) |
| split | train {len(train_text):,} chars / {len(train_ids):,} tokens; held-out {len(heldout_text):,} chars / {len(heldout_ids):,} tokens (whole documents, crc32 of the key) |
| training | {opts.steps} AdamW steps (betas 0.9/0.95, weight decay 0.1), batch {opts.batch} x {opts.seq} tokens, BOS-prefixed random chunks, peak LR {opts.lr:g}, {warmup} warmup steps, cosine to 10%, grad clip 1.0, dropout {opts.dropout:g} on residual branches, seed {opts.seed} |
| training time | {train_seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads (torch {torch.__version__}); whole script {(time.perf_counter() - start) / 60:.1f} min |
| final train loss | {final_loss:.3f} (mean of the last 50 steps, dropout on) |
| held-out perplexity | **{heldout_ppl:.2f}** (token-level, non-overlapping {opts.seq}-token windows each starting with BOS, weights as stored in fp16, run in fp32) |

Files: `params.json` + `model.safetensors` (fp16, llama-export format, rotate-half RoPE), `tokenizer.model`.

Greedy samples (the stored weights, through the KV cache):

{sample_md}

Retrain: `python tools/train_tiny.py` (`--out DIR`, `--steps N`). The corpus text depends on the Python
version (its docstrings change), so another version gives slightly different weights and numbers.
"""
    (opts.out / "README.md").write_text(readme)
    print(f"wrote {opts.out} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
