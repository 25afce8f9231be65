"""SmoothQuant calibration: per-input-channel activation statistics from the Torch reference, and the
smoothing factors and per-tensor activation scales derived from them.

Statistics come from forward hooks on every block's nn.Linear inputs while the reference (fp32) runs over
calibration windows. The smoothing factor of input channel j is s_j = max|X_j|^α / max|W_j|^(1−α), with
max|W_j| taken over every linear that reads that input (wq, wk and wv share one input, as do w1 and w3):
activations are divided by s, weights multiplied by it, so outlier channels move from the activations (int8
per tensor) into the weights (int8 per output channel), where they cost far less precision.

Where s goes (quantize.WeightTransform applies it to the streamed weights, so the graph is unchanged):
- attention_norm → wq/wk/wv: the norm weight is divided by s, the three weights' columns multiplied by it.
- ffn_norm → w1/w3: likewise.
- w2: its input is silu(w1·x) ⊙ (w3·x), linear in w3's output, so w3's rows are divided by s and w2's
  columns multiplied by it (exact).
- wo: not smoothed. Its input comes out of attention (softmax · V, with V shared by several query heads under
  GQA), so a factor would have to be folded into wv per kv head and agree across the heads sharing it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..model import Transformer

CALIBRATION_WINDOW = 512  # tokens per calibration sample (capped at the model's context length)
DEFAULT_SAMPLES = 32
DEFAULT_ALPHA = 0.5
_EPS = 1e-5  # keeps an all-zero channel from dividing by zero


@dataclass(frozen=True)
class CalibrationText:
    text: str
    source: str  # "built-in: tiny training text" or the file path as given
    sha256: str  # of the UTF-8 bytes calibrated on


def builtin_text() -> CalibrationText:
    from ..assets.corpus import corpus

    text = corpus()[0]
    return CalibrationText(text, "built-in: llama_export.assets.corpus training text",
                           hashlib.sha256(text.encode()).hexdigest())


def read_calibration_file(path: str | Path) -> CalibrationText:
    """A user's UTF-8 text file; empty, binary or unreadable files are a UserError (one line, exit 2)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"--calibration {path}: cannot read it ({exc.strerror or exc})") from None
    if not data.strip():
        raise UserError(f"--calibration {path}: the file is empty; give a UTF-8 text file with at least one "
                        "context length of text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise UserError(f"--calibration {path}: not a UTF-8 text file (binary data); give plain text")
    return CalibrationText(text, str(path), hashlib.sha256(data).hexdigest())


def calibration_windows(token_ids: list[int], window: int, samples: int, source: str,
                        bos: int | None) -> list[list[int]]:
    """Up to `samples` windows of `window` tokens, evenly spaced over the text (BOS first when there is one)."""
    body = window - (1 if bos is not None else 0)
    if len(token_ids) < body:
        raise UserError(f"calibration text {source} has {len(token_ids)} tokens, shorter than the context "
                        f"length used for calibration ({window} tokens); give more text")
    starts = np.linspace(0, len(token_ids) - body, num=min(samples, len(token_ids) // body)).astype(int)
    prefix = [] if bos is None else [bos]
    return [prefix + token_ids[s:s + body] for s in sorted(set(starts.tolist()))]


@dataclass
class Calibration:
    """What the int8 export needs from calibration; arrays are fp32 numpy, keyed by checkpoint tensor name."""

    alpha: float
    source: str
    sha256: str
    samples: int
    tokens: int
    input_amax: dict[str, np.ndarray]  # linear weight name -> per-input-channel max|X| (unsmoothed)
    smoothing: dict[str, np.ndarray]  # linear weight name -> s (per input channel); absent: not smoothed

    def activation_amax(self, weight_name: str) -> float:
        """max|X / s| over the tensor: the per-tensor activation range after smoothing."""
        amax = self.input_amax[weight_name]
        s = self.smoothing.get(weight_name)
        return float(np.max(amax if s is None else amax / s))

    def manifest(self) -> dict:
        return {"alpha": self.alpha, "source": self.source, "sha256": self.sha256, "samples": self.samples,
                "tokens": self.tokens, "smoothed": sorted({_group_of(n) for n in self.smoothing})}


def smoothing_groups(n_layers: int) -> list[tuple[str, list[str]]]:
    """(what absorbs 1/s, the linears whose input it is) per smoothed input."""
    groups = []
    for i in range(n_layers):
        p = f"layers.{i}"
        groups.append((f"{p}.attention_norm.weight", [f"{p}.attention.w{x}.weight" for x in "qkv"]))
        groups.append((f"{p}.ffn_norm.weight", [f"{p}.feed_forward.w1.weight", f"{p}.feed_forward.w3.weight"]))
        groups.append((f"{p}.feed_forward.w3.weight", [f"{p}.feed_forward.w2.weight"]))
    return groups


def _group_of(linear: str) -> str:
    return linear.rsplit(".", 2)[-2]  # "wq", "w1", "w2"...


@torch.no_grad()
def collect_input_amax(model, windows: list[list[int]]) -> dict[str, np.ndarray]:
    """Per-input-channel max|X| of every block linear's input over all windows (forward hooks)."""
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name.startswith("layers."):
            name = f"{module_name}.weight"

            def hook(mod, inputs, output, name=name):
                amax = inputs[0].detach().abs().float().reshape(-1, inputs[0].shape[-1]).amax(0)
                stats[name] = amax if name not in stats else torch.maximum(stats[name], amax)

            hooks.append(module.register_forward_hook(hook))
    try:
        for ids in windows:
            x = torch.tensor([ids])
            positions = torch.arange(x.shape[1])[None]
            model(x, positions, torch.ones_like(x), *model.empty_cache(1))
    finally:
        for h in hooks:
            h.remove()
    return {name: t.numpy() for name, t in stats.items()}


def smoothing_factors(model, input_amax: dict[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    """s per input channel for every smoothed linear (the members of a group share one s)."""
    weights = dict(model.named_parameters())
    factors = {}
    for _, linears in smoothing_groups(model.args.n_layers):
        x_amax = np.maximum(np.max([input_amax[n] for n in linears], axis=0), _EPS)
        w_amax = np.max([weights[n].detach().abs().float().amax(0).numpy() for n in linears], axis=0)
        s = x_amax ** alpha / np.maximum(w_amax, _EPS) ** (1 - alpha)
        s = np.clip(s, _EPS, None).astype(np.float32)
        for n in linears:
            factors[n] = s
    return factors


def calibrate(checkpoint, text: CalibrationText, tokenizer, alpha: float = DEFAULT_ALPHA,
              samples: int = DEFAULT_SAMPLES) -> Calibration:
    """Run the fp32 reference over the calibration windows (text tokenized by `tokenizer`, an
    exporter.tokenization.Tokenizer); the model is dropped before returning. Of `checkpoint` (an
    exporter.checkpoints.Checkpoint, passed in by the exporter) only `args` and `state_dict(dtype)` are read."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha}: the SmoothQuant migration strength must lie in [0, 1]")
    if tokenizer is None:
        raise UserError("int8 calibration needs the checkpoint's tokenizer (tokenizer.json or tokenizer.model next "
                        "to the weights) to tokenize the text")
    window = min(CALIBRATION_WINDOW, checkpoint.args.max_seq_len)
    bos = tokenizer.bos_id
    windows = calibration_windows(tokenizer.encode(text.text, bos=False), window, samples, text.source, bos)
    model = Transformer.from_state_dict(checkpoint.args, checkpoint.state_dict(torch.float32))
    input_amax = collect_input_amax(model, windows)
    factors = smoothing_factors(model, input_amax, alpha)
    del model
    return Calibration(alpha, text.source, text.sha256, len(windows), sum(map(len, windows)), input_amax,
                       factors)


__all__ = ["CALIBRATION_WINDOW", "DEFAULT_ALPHA", "DEFAULT_SAMPLES", "Calibration", "CalibrationText",
           "builtin_text", "calibrate", "calibration_windows", "collect_input_amax", "read_calibration_file",
           "smoothing_factors", "smoothing_groups"]
