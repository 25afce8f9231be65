"""The click options that several commands share (model choice, graph shape, quantization) and their value checks.

Kept apart from cli.py so the commands read as what they do; every check here fails with one line (UserError or
click's usage error), never a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from .errors import UserError


def model_options(f):
    """The options that choose a model's weights, shared by every command that loads one."""
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init.")(f)
    f = click.option("--random-init", is_flag=True, help="Random weights for --size (default for sizes other than tiny).")(f)
    f = click.option("--checkpoint", type=click.Path(path_type=Path),
                     help="Meta consolidated folder, Hugging Face folder, or llama-export safetensors folder.")(f)
    f = click.option("--size", help="A named size (llama-export sizes). Default: the built-in tiny model.")(f)
    return f


class FiniteFloat(click.FloatRange):
    """A float option that also refuses nan and inf (a range check lets nan through: every comparison is False)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        # click renders an unbounded range as "x<=None" in --help; say nothing when there are no bounds
        return "" if self.min is None and self.max is None else super()._describe_range()


def utf8_prompts(_ctx, _param, values):
    """Arguments that were not valid UTF-8 reach Python as lone surrogates; refuse them naming the option."""
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError("--prompt is not valid UTF-8 text; pass the prompt as UTF-8") from None
    return values


def nonempty_path(_ctx, param, value):
    """`--out ""` (an unset shell variable) must not mean the current directory."""
    if value is not None and not value.strip():
        raise UserError(f"--{param.name} is empty (an unset shell variable?); name the folder to write")
    return None if value is None else Path(value)


def export_options(f):
    """The options that shape the ONNX graph, shared by `export` and `build`."""
    f = click.option("--quiet", is_flag=True, help="No progress output.")(f)
    f = click.option("--target", type=click.Choice(["onnx", "ort", "plugin", "none"]), default="none",
                     show_default=True,
                     help="Fusion target (graphs/passes.py; `none` builds in every runtime, TensorRT included).")(f)
    f = click.option("--force", is_flag=True,
                     help="Replace --out even when it is not a llama-export output folder.")(f)
    f = click.option("--allow-nonfinite", is_flag=True, help="Export weights holding NaN or Inf (refused by default).")(f)
    f = click.option("--out", type=click.Path(), callback=nonempty_path,
                     help="Output folder (default: out/<size-or-checkpoint-name>-<precision>). An existing one is "
                          "replaced only when it is a llama-export output (or with --force).")(f)
    f = click.option("--opset", type=int, default=23, show_default=True, help="ONNX opset, 18 or newer.")(f)
    f = click.option("--precision", default="fp32", show_default=True,
                     help="fp32, fp16, bf16 (typed graph); int8-wo (int8 weights), int8 (W8A8, calibrated) or "
                          "int4-wo (packed int4 weights, per-block scales; AWQ-calibrated by default).")(f)
    return quantization_options(f)


def quantization_options(f):
    """int8 options. The float dtype is its own option rather than part of the precision name: precision stays
    one of the five names the gate, manifest and design know, and --float-dtype composes with both int8 kinds."""
    f = click.option("--float-dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                     help="int8/int4 precisions: dtype of activations, KV cache and unquantized weights [fp32].")(f)
    f = click.option("--block-size", type=click.Choice(["32", "64", "128"]), default=None,
                     help="int4-wo: input channels per scale [128].")(f)
    f = click.option("--int4-method", type=click.Choice(["awq", "rtn"]), default=None,
                     help="int4-wo: awq (scales and clipping searched on --calibration text) or rtn "
                          "(round to nearest) [awq].")(f)
    f = click.option("--calibration", type=click.Path(path_type=Path), default=None,
                     help="int8 / int4-wo AWQ: UTF-8 text to calibrate on (default: the tiny model's training "
                          "text).")(f)
    f = click.option("--calibration-samples", type=click.IntRange(min=1), default=None,
                     help="int8 / int4-wo AWQ: calibration windows (default 32, of min(512, context) tokens).")(f)
    f = click.option("--alpha", type=FiniteFloat(), default=None, help="int8: SmoothQuant migration strength [0.5].")(f)
    f = click.option("--quantize-lm-head", is_flag=True, help="int8/int4: also quantize the output projection.")(f)
    f = click.option("--quantize-embeddings", is_flag=True, help="int8/int4: also quantize the embedding table.")(f)
    return f
