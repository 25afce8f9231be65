"""Export stage: trace the reference model to ONNX on the meta device, then stream the weights into external data.

Bounded memory: the graph is traced from a model whose parameters live on the meta device (no storage), and
every weight is read from the checkpoint one tensor at a time, converted to the model dtype and appended to
`model.onnx.data` (weights.py, in a thread that runs while the graph is traced). Peak memory is the traced graph
plus about two of the largest tensors, whatever the model size.

One graph serves prefill (past = 0) and decode (seq = 1); names and dims come from io_spec.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir
import torch

from .. import io_spec
from ..config import ModelArgs, size_name
from ..errors import UserError
from .checkpoints import Checkpoint
from .model import Transformer, rope_inv_freq
from .weights import attach, embed_constants, mark_pending, start_streamer

if TYPE_CHECKING:
    from ..graphs.quantize import QuantOptions

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KV_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # io_spec / manifest spelling
# int8 precisions quantize the linear layers; everything else (activations, norms, KV cache, unquantized
# weights) keeps a float dtype, chosen with float_dtype (--float-dtype), fp32 by default.
QUANTIZED_PRECISIONS = ("int8-wo", "int8", "int4-wo")
ALL_PRECISIONS = (*PRECISIONS, *QUANTIZED_PRECISIONS)
MIN_OPSET, DEFAULT_OPSET = 18, 23
MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"


@dataclass(frozen=True)
class ExportResult:
    model_path: Path
    data_path: Path
    n_tensors: int
    data_bytes: int
    fusion_counts: dict[str, int] = field(default_factory=dict)  # graphs.passes.apply_target's fire counts


def float_dtype_name(precision: str, float_dtype: str | None = None) -> str:
    """The graph's float dtype: the precision itself for fp32/fp16/bf16, float_dtype (default fp32) for int8."""
    if precision in PRECISIONS:
        if float_dtype not in (None, precision):
            raise UserError(f"--float-dtype {float_dtype} contradicts --precision {precision}; --float-dtype "
                            f"applies to the int8 precisions ({', '.join(QUANTIZED_PRECISIONS)})")
        return precision
    if float_dtype is not None and float_dtype not in PRECISIONS:
        raise UserError(f"unknown --float-dtype {float_dtype!r}; choose one of: {', '.join(PRECISIONS)}")
    return float_dtype or "fp32"


def check_export_options(precision: str, opset: int, target: str = "none",
                         float_dtype: str | None = None) -> torch.dtype:
    """Validates the options; returns the graph's float dtype."""
    from ..graphs.passes import ONNX_TARGET_OPSET, TARGETS

    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    if target == "onnx" and opset < ONNX_TARGET_OPSET:
        raise UserError(f"--target onnx needs --opset {ONNX_TARGET_OPSET} (RMSNormalization, RotaryEmbedding, "
                        f"Attention), got {opset}")
    if precision not in ALL_PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(ALL_PRECISIONS)}")
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: the export needs opset {MIN_OPSET} or newer "
                        f"(default {DEFAULT_OPSET})")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UserError(f"--opset {opset} is newer than this onnx package knows (up to {newest}); use "
                        f"{MIN_OPSET}..{newest} (default {DEFAULT_OPSET})")
    name = float_dtype_name(precision, float_dtype)
    if precision == "int8" and name == "bf16":  # static activation scales are stored in the float dtype
        raise UserError("--precision int8 (W8A8) supports --float-dtype fp32 or fp16, not bf16; use int8-wo for bf16")
    if precision == "int4-wo" and opset < 21:
        raise UserError(f"--precision int4-wo needs --opset 21 or newer (INT4 and blocked DequantizeLinear), "
                        f"got {opset}")
    if precision in QUANTIZED_PRECISIONS and name != "fp32" and opset < 19:
        raise UserError(f"--precision {precision} with --float-dtype {name} needs --opset 19 or newer "
                        "(16-bit QuantizeLinear/DequantizeLinear scales)")
    return PRECISIONS[name]


def _example_inputs(args: ModelArgs, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Meta tensors with distinct sizes for batch, seq and past, so the tracer cannot conflate the dims."""
    batch, seq, past = 2, 3, 5
    ids = torch.zeros((batch, seq), dtype=torch.int64, device="meta")
    mask = torch.ones((batch, past + seq), dtype=torch.int64, device="meta")
    kv = (batch, args.kv_heads, past, args.head_dim)
    cache = [torch.zeros(kv, dtype=dtype, device="meta") for _ in range(2 * args.n_layers)]
    return (ids, ids.clone(), mask, *cache)


def _dynamic_shapes(n_layers: int) -> dict:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    past = torch.export.Dim("past", min=0)
    # total = past + seq: DYNAMIC lets the tracer derive the relation instead of us stating it.
    return {
        "input_ids": {0: batch, 1: seq},
        "position_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: torch.export.Dim.DYNAMIC},
        "past": tuple([{0: batch, 2: past}] * (2 * n_layers)),  # *past counts as one entry
    }


def trace_graph(args: ModelArgs, dtype: torch.dtype = torch.float32, opset: int = DEFAULT_OPSET,
                replicate: bool = True) -> ir.Model:
    """The reference model's graph with io_spec names and dims; initializers declared but without data.

    With `replicate` (the default) the tracer sees a one-block model and replicate.py copies that block
    n_layers times (7B: 94 s of tracing becomes ~8 s); `replicate=False` traces every block (tests compare)."""
    if replicate and args.n_layers > 1:
        from .replicate import replicate_block

        model = _trace(args.replace(n_layers=1), dtype, opset)
        replicate_block(model, args.n_layers)
    else:
        model = _trace(args, dtype, opset)
    graph = model.graph
    _apply_io_spec(graph, args, dtype)
    _name_anonymous_dims(graph)
    _strip_trace_metadata(graph)
    mark_pending(model)
    return model


def _trace(args: ModelArgs, dtype: torch.dtype, opset: int) -> ir.Model:
    rope_inv_freq(args)  # fill the cache outside tracing so the lru_cache never holds a traced tensor
    with torch.device("meta"):
        model = Transformer(args).to(dtype).eval()
    n = args.n_layers
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, _example_inputs(args, dtype), dynamo=True, optimize=False, opset_version=opset,
            dynamic_shapes=_dynamic_shapes(n), input_names=io_spec.input_names(n),
            output_names=io_spec.output_names(n), verbose=False, report=False)
    return program.model


def _strip_trace_metadata(graph: ir.Graph) -> None:
    """The tracer records each node's Python stack trace and module path (absolute file paths, most of the
    file's size); drop them so the model depends on the inputs only."""
    for node in graph:
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
    for value in [*graph.inputs, *graph.initializers.values()]:
        value.metadata_props.clear()


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress ("[torch.onnx] Obtain model graph...") to stdout; keep stdout for our output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _apply_io_spec(graph: ir.Graph, args: ModelArgs, dtype: torch.dtype) -> None:
    """Give every input/output exactly io_spec's shape (the tracer names total `s53` or `past + seq`)."""
    spec = io_spec.io_spec(args)
    for values, tensors in ((graph.inputs, spec["inputs"]), (graph.outputs, spec["outputs"])):
        if [v.name for v in values] != [t.name for t in tensors]:
            raise RuntimeError(f"traced I/O {[v.name for v in values]} differ from io_spec")
        for value, tensor in zip(values, tensors):
            value.shape = ir.Shape(list(tensor.shape))


def _name_anonymous_dims(graph: ir.Graph) -> None:
    """Intermediate shapes carry the tracer's symbol names (`s53`, counters that grow with every export in a
    process). Map them onto io_spec's names so identical inputs give byte-identical files."""
    outputs = set(graph.outputs)
    for node in graph:
        for value in node.outputs:
            if value.shape is None or value in outputs:
                continue
            value.shape = ir.Shape([_canonical_dim(d.value) if isinstance(d, ir.SymbolicDim) else d
                                    for d in value.shape])


def _canonical_dim(name: str | None) -> str | None:
    """io_spec's names stay, `past + seq` is total; anything else (tracer counters like `s53`) is anonymous."""
    if name is None:
        return None
    known = {io_spec.BATCH, io_spec.SEQ, io_spec.PAST, io_spec.TOTAL}
    if name in known:
        return name
    parts = {p.strip() for p in name.split("+")}
    return io_spec.TOTAL if parts == {io_spec.PAST, io_spec.SEQ} else None


def export_onnx(checkpoint: Checkpoint, folder: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                progress: Callable[[str], None] | None = None, target: str = "none",
                float_dtype: str | None = None, quantization: QuantOptions | None = None) -> ExportResult:
    """Trace + stream weights into `folder` (which must exist): model.onnx and model.onnx.data.

    `progress(name)` is called after each tensor is written. This writes into the folder directly; use
    artifacts.staged_output for the interrupt-safe output folder. For the int8 precisions `quantization`
    (prepare_quantization) says what to quantize; by default int8-wo's defaults, or int8 calibrated on the
    built-in text.
    """
    from ..graphs.passes import apply_target
    from ..graphs.quantize import quantize_activations, quantize_weights, weight_transform

    dtype = check_export_options(precision, opset, target, float_dtype)
    if precision in QUANTIZED_PRECISIONS and quantization is None:
        quantization = prepare_quantization(checkpoint, precision)
    transform = weight_transform(checkpoint.args, quantization, dtype, target) if quantization else None
    folder = Path(folder)
    streamer = start_streamer(checkpoint, dtype, folder / DATA_FILE, progress, transform)
    try:
        # weights stream while the graph is traced and rewritten
        model = trace_graph(checkpoint.args, dtype, opset)
        embed_constants(model)
        # The quantize pass declares the int8 weights and scales the stream writes (no weight bytes read).
        n_quantized = quantize_weights(model, checkpoint.args, quantization, dtype) if quantization else 0
        # Fusion passes run while the weights still stream: they see PendingWeight placeholders (shape and
        # dtype, no bytes), so they cannot read a weight by accident and their time overlaps the writes.
        model, fusion_counts = apply_target(model, checkpoint.args, target)
        if quantization:
            fusion_counts["quantize_weights"] = n_quantized
            fusion_counts["quantize_activations"] = quantize_activations(model, quantization)
        layout = streamer.result()
    except BaseException:
        streamer.cancel()  # stop writing before the caller removes the folder
        raise
    attach(model, layout, dtype, folder, DATA_FILE)
    n_tensors, n_bytes = len(layout), (folder / DATA_FILE).stat().st_size
    model_path = folder / MODEL_FILE
    model.producer_name, model.producer_version = "llama-export", _version()
    ir.save(model, model_path)
    with open(model_path, "rb+") as f:
        os.fsync(f.fileno())
    return ExportResult(model_path, folder / DATA_FILE, n_tensors, n_bytes, fusion_counts)


def prepare_quantization(checkpoint: Checkpoint, precision: str, calibration_file: str | Path | None = None,
                         alpha: float | None = None, samples: int | None = None, quantize_lm_head: bool = False,
                         quantize_embeddings: bool = False, block_size: int | None = None,
                         int4_method: str | None = None) -> QuantOptions | None:
    """QuantOptions for an int8 precision (None for float ones). int8 (W8A8) calibrates here: the fp32 Torch
    reference runs over `calibration_file` (default: the tiny model's training text) and is dropped again."""
    from ..graphs import calibration as cal
    from ..graphs.quantize import QuantOptions

    if precision not in QUANTIZED_PRECISIONS:
        if calibration_file is not None or alpha is not None:
            raise UserError(f"--calibration / --alpha apply to --precision int8, not {precision}")
        if block_size is not None or int4_method is not None:
            raise UserError(f"--block-size / --int4-method apply to --precision int4-wo, not {precision}")
        return None
    _refuse_tied_quantization(checkpoint, quantize_lm_head, quantize_embeddings)
    if precision == "int4-wo":
        if alpha is not None:
            raise UserError("--alpha applies to --precision int8 (SmoothQuant), not int4-wo")
        return prepare_int4(checkpoint, calibration_file, samples, quantize_lm_head, quantize_embeddings,
                            block_size, int4_method)
    if block_size is not None or int4_method is not None:
        raise UserError(f"--block-size / --int4-method apply to --precision int4-wo, not {precision}")
    calibration = None
    if precision == "int8":
        text = cal.builtin_text() if calibration_file is None else cal.read_calibration_file(calibration_file)
        calibration = cal.calibrate(checkpoint, text, find_tokenizer_for(checkpoint),
                                    cal.DEFAULT_ALPHA if alpha is None else alpha,
                                    cal.DEFAULT_SAMPLES if samples is None else samples)
    elif calibration_file is not None or alpha is not None:
        raise UserError("--calibration / --alpha apply to --precision int8 (int8-wo needs no calibration)")
    return QuantOptions(precision, quantize_lm_head, quantize_embeddings, calibration)


def _refuse_tied_quantization(checkpoint: Checkpoint, quantize_lm_head: bool, quantize_embeddings: bool) -> None:
    if checkpoint.args.tie_embeddings and (quantize_lm_head or quantize_embeddings):
        raise UserError("these weights tie the output projection to the embedding (one matrix read by both); "
                        "quantizing it is not supported: drop --quantize-lm-head / --quantize-embeddings")


def prepare_int4(checkpoint: Checkpoint, calibration_file: str | Path | None = None, samples: int | None = None,
                 quantize_lm_head: bool = False, quantize_embeddings: bool = False, block_size: int | None = None,
                 int4_method: str | None = None) -> QuantOptions:
    """QuantOptions for int4-wo; AWQ (the default method) calibrates here, one layer at a time (graphs/awq.py)."""
    from ..graphs import calibration as cal
    from ..graphs.awq import calibrate_awq
    from ..graphs.int4 import BLOCK_SIZES, DEFAULT_BLOCK_SIZE
    from ..graphs.quantize import INT4_METHODS, QuantOptions

    _refuse_tied_quantization(checkpoint, quantize_lm_head, quantize_embeddings)
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    int4_method = "awq" if int4_method is None else int4_method
    if block_size not in BLOCK_SIZES:
        raise UserError(f"--block-size {block_size}: choose one of {', '.join(map(str, BLOCK_SIZES))}")
    if int4_method not in INT4_METHODS:
        raise UserError(f"--int4-method {int4_method!r}: choose one of {', '.join(INT4_METHODS)}")
    plan = None
    if int4_method == "awq":
        text = cal.builtin_text() if calibration_file is None else cal.read_calibration_file(calibration_file)
        plan = calibrate_awq(checkpoint, text, find_tokenizer_for(checkpoint), block_size, samples)
    elif calibration_file is not None:
        raise UserError("--calibration applies to --int4-method awq (rtn needs no calibration)")
    return QuantOptions("int4-wo", quantize_lm_head, quantize_embeddings, block_size=block_size,
                        int4_method=int4_method, awq=plan)


def export_to_folder(checkpoint: Checkpoint, out_dir: str | Path, precision: str = "fp32",
                     opset: int = DEFAULT_OPSET, quiet: bool = False, target: str = "none",
                     float_dtype: str | None = None, quantization: QuantOptions | None = None,
                     force: bool = False) -> Path:
    """The `export` command as a library call: DIR/model.onnx, model.onnx.data, the tokenizer's files (when there
    is one) and manifest.json, written to a staging sibling and renamed into place at the end. Returns DIR.
    An existing DIR is replaced only when it is a llama-export output, or with `force` (artifacts.staged_output)."""
    from . import artifacts

    check_export_options(precision, opset, target, float_dtype)  # fail before creating anything
    if precision in QUANTIZED_PRECISIONS and quantization is None:
        quantization = prepare_quantization(checkpoint, precision)
    out_dir = artifacts.check_replaceable(out_dir, force=force, protect=[getattr(checkpoint, "folder", None)])
    with artifacts.staged_output(out_dir, force=force, protect=[getattr(checkpoint, "folder", None)]) as staging, \
            _progress_bar(checkpoint, quiet) as progress:
        result = export_onnx(checkpoint, staging, precision, opset, progress, target, float_dtype, quantization)
        tokenizer = copy_tokenizer(checkpoint, staging)
        artifacts.write_manifest(staging, manifest_content(checkpoint, precision, opset, result, target,
                                                           float_dtype, quantization, tokenizer))
    return out_dir


def manifest_content(checkpoint: Checkpoint, precision: str, opset: int, result: ExportResult,
                     target: str = "none", float_dtype: str | None = None,
                     quantization: QuantOptions | None = None, tokenizer: dict | None = None) -> dict:
    """manifest.json's content; `tokenizer` is copy_tokenizer's entry (kind + files), None when there is none."""
    from . import artifacts

    args = checkpoint.args
    dtype_name = float_dtype_name(precision, float_dtype)
    extra = {} if quantization is None else {"float_dtype": dtype_name, "quantization": quantization.manifest()}
    return {
        "format": "llama-export/1",
        "size": size_name(args),
        "args": args.to_dict(),
        "checkpoint": checkpoint.manifest_record(),
        "precision": precision,
        "opset": opset,
        "target": target,
        "fusion_counts": result.fusion_counts,
        "model": MODEL_FILE,
        "external_data": DATA_FILE,
        "tool": artifacts.tool_info(),
        "libraries": artifacts.library_versions(),
        "io": io_spec.io_spec_json(args, KV_DTYPE_NAMES[dtype_name]),
        **({} if tokenizer is None else {"tokenizer": tokenizer}),
        **extra,
    }


def find_tokenizer_for(checkpoint: Checkpoint):
    """The checkpoint folder's tokenizer (exporter.tokenization detects which kind); for random weights, the tiny
    asset's when its vocabulary fits (a stand-in so `generate DIR` works on a random export). None when neither."""
    from .sources import TINY_ASSET
    from .tokenization import find_tokenizer

    folder = getattr(checkpoint, "folder", None)
    if folder is not None:
        return find_tokenizer(folder)
    stand_in = find_tokenizer(TINY_ASSET)
    if stand_in is not None and checkpoint.args.vocab_size >= stand_in.vocab_size:
        return stand_in
    return None


def copy_tokenizer(checkpoint: Checkpoint, folder: Path) -> dict | None:
    """Copy the checkpoint's tokenizer files into an output folder; their manifest entry (kind + files), or None."""
    tokenizer = find_tokenizer_for(checkpoint)
    if tokenizer is None:
        return None
    tokenizer.copy_to(folder)
    return tokenizer.manifest()


@contextlib.contextmanager
def _progress_bar(checkpoint: Checkpoint, quiet: bool):
    """A rich bar over tensors on stderr, or a no-op when quiet."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[tensor]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("tracing", total=len(checkpoint.names()), tensor="")

        def advance(name: str) -> None:
            bar.update(task, advance=1, description="weights", tensor=name)

        yield advance


def _version() -> str:
    from importlib.metadata import version

    return version("llama-export")


__all__ = ["ALL_PRECISIONS", "DATA_FILE", "DEFAULT_OPSET", "KV_DTYPE_NAMES", "MIN_OPSET", "MODEL_FILE",
           "PRECISIONS", "QUANTIZED_PRECISIONS", "ExportResult", "check_export_options", "copy_tokenizer", "export_onnx",
           "export_to_folder", "find_tokenizer_for", "float_dtype_name", "manifest_content",
           "prepare_quantization", "trace_graph"]
