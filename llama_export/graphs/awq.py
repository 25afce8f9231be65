"""AWQ (activation-aware weight quantization, Lin et al. 2023) for INT4 weights: per-input-channel scales and
per-block clipping ranges searched on calibration activations, one decoder layer at a time.

Scales. Quantization error on input channel j costs |X_j| times as much in the output, so channels that see large
activations are scaled up before rounding (W·diag(s), finer relative steps) and the input is divided by s, which
is folded into what produces it, so the float model is unchanged (tests assert it):
- attention_norm → wq/wk/wv and ffn_norm → w1/w3: the norm weight is divided by s.
- wv → wo: wo's input is softmax · V per query head, and V is shared by the n_heads / n_kv_heads query heads of
  a kv head (GQA), so s is searched per (kv head, channel) and wo's columns of every query head that reads kv
  head g take g's factor; wv's output rows are divided by it.
- w3 → w2: w2's input silu(w1·x) ⊙ (w3·x) is linear in w3's output, so w3's rows are divided by s.
The search is the paper's: s = mean|X|^α (normalised by sqrt(max · min)), α on a grid of `n_grid` points in
[0, 1), keeping the α whose fake-quantized outputs (X / s) · Q(W·s) are closest to X · W over the group's
linears (α = 0 is plain RTN, so the search never does worse than RTN on its calibration loss).
Clipping. Then, on the scaled weights, each block's range max|w| is shrunk by the ratio (1, 0.95, ..., 0.5) that
minimises that block's output error on the calibration tokens; skipped for wq/wk as in the paper (their error
shows in attention scores, which a linear's output loss does not measure).

Memory: the reference never exists whole. The calibration windows' hidden states (windows x tokens x dim fp32)
go through one layer at a time, its weights read from the checkpoint straight into a block built on the meta
device; each distinct linear input (wq's serves wk/wv, w1's serves w3) keeps at most `max_tokens` rows for the
search; the loss and clip searches work on LOSS_OUT_CHUNK / CLIP_OUT_CHUNK output channels at a time. For 7B with
32 windows of 512 tokens: 0.27 GB of hidden states (updated in place), 0.8 GB of one layer's fp32 weights,
0.37 GB of search inputs (4096 rows each of wq's, wo's, w1's and w2's inputs) and tens of MB of temporaries;
docs/BENCHMARKS.md (INT4) has the measured peak. The plan the export keeps is one uint8 clip step per block (7B,
block 128: 51 MB).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..memory import release_free_heap
from ..model import TransformerBlock, attention_bias, rope_inv_freq, rope_tables
from . import int4

N_GRID = 20
MAX_SHRINK = 0.5  # clip ratios 1, 1 - 1/N_GRID, ..., 1 - MAX_SHRINK
MAX_SEARCH_TOKENS = 4096  # input rows per linear kept for the scale search
CLIP_TOKENS = 512  # rows used by the clip search (the paper's n_sample_token)
CLIP_OUT_CHUNK = 256  # output channels per clip-search step (bounds its [tokens, chunk, blocks] temporaries)
LOSS_OUT_CHUNK = 1024  # output channels per scale-search loss step (bounds its fake-quantized [in, chunk] copies)
# Linears that read the very same tensor: its rows are recorded once, under the first linear's name.
SHARED_INPUT = {"attention.wk": "attention.wq", "attention.wv": "attention.wq", "feed_forward.w3": "feed_forward.w1"}
UNCLIPPED = ("attention.wq", "attention.wk")


@dataclass
class AwqPlan:
    """Everything the streamed weight transform needs; arrays are fp32 numpy keyed by checkpoint name.
    Clipping is stored as grid steps (uint8 [n_blocks, out], ratio = 1 - step / N_GRID) on the scaled weight's
    own block ranges, so it costs a quarter of a float per block."""

    block_size: int
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # linear -> multiply input channels by s
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # absorber -> divide output channels by s
    clip_steps: dict[str, np.ndarray] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)  # group ("layers.0.qkv") -> chosen α, for the record
    calibration: dict = field(default_factory=dict)  # source, sha256, samples, tokens of the calibration text

    def clip_amax(self, name: str, w: torch.Tensor) -> torch.Tensor | None:
        """The clipped block ranges of the scaled [in, out] weight `w`, or None (unclipped)."""
        steps = self.clip_steps.get(name)
        if steps is None:
            return None
        block = int4.block_size_for(w.shape[0], self.block_size)
        return int4.block_amax(w, block) * (1 - torch.from_numpy(steps).float() / N_GRID)

    def scaled(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Checkpoint tensor `name` with the plan's factors applied (columns first, then rows: the order the
        search applied them in, so the transform reproduces its weights bit for bit)."""
        if name in self.columns:
            w = w * torch.from_numpy(self.columns[name])[None, :]
        if name in self.rows:
            s = torch.from_numpy(self.rows[name])
            w = w / (s if w.dim() == 1 else s[:, None])
        return w

    def manifest(self) -> dict:
        alphas = list(self.alphas.values())
        clipped = sum(int((s > 0).sum()) for s in self.clip_steps.values())
        blocks = sum(s.size for s in self.clip_steps.values())
        return {**self.calibration, "scaled_groups": len(self.alphas), "alpha_mean": float(np.mean(alphas)) if alphas else None,
                "alpha_zero_groups": int(sum(a == 0 for a in alphas)), "n_grid": N_GRID, "max_shrink": MAX_SHRINK,
                "clipped_blocks": clipped, "clip_searched_blocks": blocks}


def _rows(x: torch.Tensor, limit: int) -> torch.Tensor:
    """At most `limit` rows of [tokens, channels], evenly strided (deterministic)."""
    if x.shape[0] <= limit:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, limit).long()]


def _output_loss(x: torch.Tensor, gram: torch.Tensor | None, weights: list[torch.Tensor], s: torch.Tensor,
                 block: int) -> float:
    """Σ over the group's linears of ‖X·Wᵀ − (X / s)·Q(W·s)ᵀ‖² / numel, i.e. ‖X·E‖² with E the effective weight
    error Wᵀ − diag(1/s)·Q(diag(s)·Wᵀ); with the Gram matrix XᵀX that is Σ E ⊙ (XᵀX·E), cheaper when
    in_features < tokens. Output channels are independent (blocks run along the input), so E is built
    LOSS_OUT_CHUNK columns at a time: at 7B a whole 4096 x 11008 E and its fake-quantized copies were ~1 GB."""
    loss = 0.0
    for w in weights:  # [out, in]
        total = 0.0
        for part in w.split(LOSS_OUT_CHUNK):
            error = part.t() - int4.fake_quantize((part * s).t(), block) / s[:, None]  # [in, chunk]
            total += float((error * (gram @ error)).sum()) if gram is not None else float((x @ error).pow(2).sum())
        loss += total / (x.shape[0] * w.shape[0])
    return loss


def search_scale(x: torch.Tensor, weights: list[torch.Tensor], block: int,
                 share: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, float]:
    """(s per input channel, α) minimising the group's fake-quantized output error. `share` maps the
    per-channel activation means onto the values that must share one factor (GQA) and back."""
    block = int4.block_size_for(x.shape[1], block)
    x_mean = sum(rows.abs().sum(0) for rows in x.split(LOSS_OUT_CHUNK)) / x.shape[0]  # no |x| copy of all rows
    if share is not None:
        x_mean = share(x_mean)
    gram = x.t() @ x if x.shape[1] < x.shape[0] else None
    best, best_s, best_alpha = float("inf"), torch.ones_like(x_mean), 0.0
    for step in range(N_GRID):
        alpha = step / N_GRID
        s = x_mean.pow(alpha).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = _output_loss(x, gram, weights, s, block)
        if loss < best:
            best, best_s, best_alpha = loss, s, alpha
    return best_s, best_alpha


def search_clip(x: torch.Tensor, w: torch.Tensor, block: int) -> np.ndarray:
    """Per (block, output channel) of the [out, in] weight `w`, the grid step whose clipped range minimises the
    block's partial output error over the rows of x [tokens, in]; uint8 [n_blocks, out]."""
    x, block = _rows(x, CLIP_TOKENS), int4.block_size_for(x.shape[1], block)
    xb = int4._blocked(x.t(), block).permute(2, 0, 1)  # [tokens, n_blocks, block]
    steps = []
    for start in range(0, w.shape[0], CLIP_OUT_CHUNK):
        w_kn = w[start:start + CLIP_OUT_CHUNK].t()  # [in, chunk]
        wb = int4._blocked(w_kn, block)  # [n_blocks, block, chunk]
        reference = torch.einsum("tgb,gbn->tgn", xb, wb)
        amax = int4.block_amax(w_kn, block)
        best = torch.full(amax.shape, float("inf"))
        best_step = torch.zeros(amax.shape, dtype=torch.uint8)
        for step in range(int(MAX_SHRINK * N_GRID) + 1):
            fake = int4._blocked(int4.fake_quantize(w_kn, block, amax * (1 - step / N_GRID)), block)
            error = (torch.einsum("tgb,gbn->tgn", xb, fake) - reference).pow(2).mean(0)
            better = error < best
            best = torch.where(better, error, best)
            best_step[better] = step
        steps.append(best_step)
    return torch.cat(steps, dim=1).numpy()


def input_name(linear: str) -> str:
    """The name a linear's input rows are recorded under (SHARED_INPUT)."""
    return SHARED_INPUT.get(linear, linear)


class _InputRecorder:
    """Forward hooks that copy the block linears' input rows (strided to `per_call` rows per call) into one
    preallocated fp32 buffer per distinct input (wq's rows serve wk and wv, w1's serve w3): no per-call parts to
    join at the end, which at 7B held w2's 180 MB of rows twice."""

    def __init__(self, block: torch.nn.Module, per_call: int, calls: int):
        self.per_call, self.capacity = per_call, per_call * calls
        self.buffers: dict[str, torch.Tensor] = {}
        self.filled: dict[str, int] = {}
        self.hooks = [module.register_forward_hook(self._hook(name)) for name, module in block.named_modules()
                      if isinstance(module, torch.nn.Linear) and name not in SHARED_INPUT]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            rows = _rows(inputs[0].detach().reshape(-1, inputs[0].shape[-1]), self.per_call)
            if name not in self.buffers:
                self.buffers[name], self.filled[name] = torch.empty(self.capacity, rows.shape[1]), 0
            start = self.filled[name]
            if start + rows.shape[0] > self.capacity:
                raise RuntimeError(f"{name}: more than the {self.capacity} input rows the recorder was sized for")
            self.buffers[name][start:start + rows.shape[0]] = rows
            self.filled[name] = start + rows.shape[0]
        return hook

    def take(self, limit: int) -> dict[str, torch.Tensor]:
        """At most `limit` recorded rows per input (views of the buffers when they hold no more)."""
        for h in self.hooks:
            h.remove()
        taken = {name: _rows(buffer[:self.filled[name]], limit) for name, buffer in self.buffers.items()}
        self.buffers.clear()
        return taken


def _load_block(checkpoint, args, layer: int):
    """One decoder layer in fp32 holding the checkpoint's tensors themselves: built on the meta device and
    assigned, so no second (randomly initialised) copy of its weights exists even for a moment."""
    with torch.device("meta"):
        block = TransformerBlock(args)
    prefix = f"layers.{layer}."
    block.load_state_dict({name: checkpoint.tensor(prefix + name).float() for name in block.state_dict()},
                          assign=True)
    return block.eval()


@torch.no_grad()
def layer_plan(block, inputs: dict[str, torch.Tensor], args, layer: int, plan: AwqPlan) -> None:
    """Search and apply (in place, on `block`) the four scale groups of one layer, then the clip ranges."""
    p, b = f"layers.{layer}", plan.block_size
    att, ffn = block.attention, block.feed_forward
    scale_of: dict[str, torch.Tensor] = {}  # linear -> the factor its input is divided by

    def apply(linears: list[tuple[str, torch.nn.Linear]], s: torch.Tensor, absorber: str, absorb: torch.Tensor,
              divide_rows: Callable[[torch.Tensor], object]) -> None:
        for name, linear in linears:
            linear.weight.mul_(s[None, :])
            plan.columns[f"{p}.{name}.weight"] = s.numpy().copy()
            scale_of[name] = s
        divide_rows(absorb)
        plan.rows[f"{p}.{absorber}.weight"] = absorb.numpy().copy()

    qkv = [("attention.wq", att.wq), ("attention.wk", att.wk), ("attention.wv", att.wv)]
    s, plan.alphas[f"{p}.qkv"] = search_scale(inputs["attention.wq"], [m.weight for _, m in qkv], b)
    apply(qkv, s, "attention_norm", s, lambda t: block.attention_norm.weight.div_(t))

    n_rep, hd = args.n_heads // args.kv_heads, args.head_dim

    def share(x_mean: torch.Tensor) -> torch.Tensor:  # query heads of one kv head share its factor
        per_kv = x_mean.view(args.kv_heads, n_rep, hd).mean(1)
        return per_kv[:, None, :].expand(args.kv_heads, n_rep, hd).reshape(-1)

    s, plan.alphas[f"{p}.wo"] = search_scale(inputs["attention.wo"], [att.wo.weight], b, share)
    kv_s = s.view(args.kv_heads, n_rep, hd)[:, 0, :].reshape(-1).contiguous()
    apply([("attention.wo", att.wo)], s, "attention.wv", kv_s, lambda t: att.wv.weight.div_(t[:, None]))

    gate_up = [("feed_forward.w1", ffn.w1), ("feed_forward.w3", ffn.w3)]
    s, plan.alphas[f"{p}.gate_up"] = search_scale(inputs["feed_forward.w1"], [m.weight for _, m in gate_up], b)
    apply(gate_up, s, "ffn_norm", s, lambda t: block.ffn_norm.weight.div_(t))

    s, plan.alphas[f"{p}.w2"] = search_scale(inputs["feed_forward.w2"], [ffn.w2.weight], b)
    apply([("feed_forward.w2", ffn.w2)], s, "feed_forward.w3", s, lambda t: ffn.w3.weight.div_(t[:, None]))

    for name, module in block.named_modules():
        if isinstance(module, torch.nn.Linear) and name not in UNCLIPPED:
            x = _rows(inputs[input_name(name)], CLIP_TOKENS) / scale_of[name]  # only the rows the search uses
            plan.clip_steps[f"{p}.{name}.weight"] = search_clip(x, module.weight, b)


@torch.no_grad()
def awq_plan(checkpoint, windows: list[list[int]], block_size: int,
             progress: Callable[[int], None] | None = None) -> AwqPlan:
    """Run the calibration windows through the checkpoint's layers one at a time and search each layer. Of
    `checkpoint` (an exporter.checkpoints.Checkpoint, passed in by the exporter) only `args` and `tensor(name)`
    are read."""
    args = checkpoint.args
    ids = torch.tensor(windows)  # equal lengths (calibration.calibration_windows)
    hidden = torch.nn.functional.embedding(ids, checkpoint.tensor("tok_embeddings.weight").float())
    seq = ids.shape[1]
    cos, sin = rope_tables(torch.arange(seq)[None], rope_inv_freq(args))
    bias = attention_bias(torch.ones(1, seq, dtype=torch.int64), seq)
    empty = torch.zeros(1, args.kv_heads, 0, args.head_dim)
    per_call = max(1, MAX_SEARCH_TOKENS // len(windows))
    plan = AwqPlan(block_size)
    for layer in range(args.n_layers):
        block = _load_block(checkpoint, args, layer)
        recorder = _InputRecorder(block, per_call, len(windows))
        for w in range(len(windows)):  # one window at a time: attention temporaries stay one window's
            hidden[w:w + 1] = block(hidden[w:w + 1], cos, sin, bias, empty, empty)[0]
        layer_plan(block, recorder.take(MAX_SEARCH_TOKENS), args, layer, plan)
        del block, recorder
        release_free_heap()  # else freed search temporaries pile up in the C heap from layer to layer
        if progress is not None:
            progress(layer)
    return plan


def calibrate_awq(checkpoint, text, tokenizer, block_size: int, samples: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> AwqPlan:
    """awq_plan on `text` (calibration.CalibrationText) tokenized by `tokenizer` (exporter.tokenization), windowed
    as int8's calibration is. `progress(done, total)` is called after each layer (minutes each at 7B)."""
    from ..errors import UserError
    from .calibration import CALIBRATION_WINDOW, DEFAULT_SAMPLES, calibration_windows

    if tokenizer is None:
        raise UserError("AWQ calibration needs the checkpoint's tokenizer (tokenizer.json or tokenizer.model next "
                        "to the weights) to tokenize the text (or use --int4-method rtn)")
    window = min(CALIBRATION_WINDOW, checkpoint.args.max_seq_len)
    bos = tokenizer.bos_id
    windows = calibration_windows(tokenizer.encode(text.text, bos=False), window,
                                  DEFAULT_SAMPLES if samples is None else samples, text.source, bos)
    n_layers = checkpoint.args.n_layers
    plan = awq_plan(checkpoint, windows, block_size,
                    None if progress is None else (lambda layer: progress(layer + 1, n_layers)))
    plan.calibration = {"source": text.source, "sha256": text.sha256, "samples": len(windows),
                        "tokens": sum(map(len, windows))}
    return plan


__all__ = ["CLIP_TOKENS", "MAX_SEARCH_TOKENS", "N_GRID", "AwqPlan", "awq_plan", "calibrate_awq", "layer_plan",
           "search_clip", "search_scale"]
