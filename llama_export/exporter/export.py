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

import onnx_ir as ir
import torch

from .. import io_spec
from ..config import ModelArgs, size_name
from ..model import Transformer, rope_inv_freq
from ..pending_weights import mark_pending
from .checkpoints import Checkpoint
from .options import DEFAULT_OPSET, KV_DTYPE_NAMES, ExportOptions
from .weights import attach, embed_constants, start_streamer

MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"


@dataclass(frozen=True)
class ExportResult:
    model_path: Path
    data_path: Path
    n_tensors: int
    data_bytes: int
    options: ExportOptions  # as exported: the quantization defaults filled in
    fusion_counts: dict[str, int] = field(default_factory=dict)  # graphs.passes.apply_target's fire counts


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
    n_layers times, so tracing time no longer grows with depth (docs/BENCHMARKS.md, "Figures behind the code");
    `replicate=False` traces every block (tests compare)."""
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


def export_onnx(checkpoint: Checkpoint, folder: str | Path, options: ExportOptions | None = None,
                progress: Callable[[str], None] | None = None) -> ExportResult:
    """Trace + stream weights into `folder` (which must exist): model.onnx and model.onnx.data.

    `progress(name)` is called after each tensor is written. This writes into the folder directly; use
    export_to_folder for the interrupt-safe output folder. Quantized precisions without `options.quantization`
    get its defaults (ExportOptions.with_default_quantization); the result's options say what was exported.
    """
    from ..graphs.passes import apply_target
    from ..graphs.quantize import quantize_activations, quantize_weights, weight_transform

    options = (options or ExportOptions()).with_default_quantization(checkpoint)
    quantization, dtype = options.quantization, options.dtype
    transform = weight_transform(checkpoint.args, quantization, dtype, options.target) if quantization else None
    folder = Path(folder)
    streamer = start_streamer(checkpoint, dtype, folder / DATA_FILE, progress, transform)
    try:
        # weights stream while the graph is traced and rewritten
        model = trace_graph(checkpoint.args, dtype, options.opset)
        embed_constants(model)
        # The quantize pass declares the int8 weights and scales the stream writes (no weight bytes read).
        n_quantized = quantize_weights(model, checkpoint.args, quantization, dtype) if quantization else 0
        # Fusion passes run while the weights still stream: they see PendingWeight placeholders (shape and
        # dtype, no bytes), so they cannot read a weight by accident and their time overlaps the writes.
        model, fusion_counts = apply_target(model, checkpoint.args, options.target)
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
    return ExportResult(model_path, folder / DATA_FILE, n_tensors, n_bytes, options, fusion_counts)


def export_to_folder(checkpoint: Checkpoint, out_dir: str | Path, options: ExportOptions | None = None,
                     quiet: bool = False, force: bool = False) -> Path:
    """The `export` command as a library call: DIR/model.onnx, model.onnx.data, the tokenizer's files (when there
    is one) and manifest.json, written to a staging sibling and renamed into place at the end. Returns DIR.
    An existing DIR is replaced only when it is a llama-export output, or with `force` (artifacts.staged_output)."""
    from . import artifacts

    protect = [getattr(checkpoint, "folder", None)]
    out_dir = artifacts.check_replaceable(out_dir, force=force, protect=protect)
    with artifacts.staged_output(out_dir, force=force, protect=protect) as staging, \
            progress_bar(checkpoint, quiet) as progress:
        result = export_onnx(checkpoint, staging, options, progress)
        tokenizer = copy_tokenizer(checkpoint, staging)
        artifacts.write_manifest(staging, manifest_content(checkpoint, result, tokenizer))
    return out_dir


def manifest_content(checkpoint: Checkpoint, result: ExportResult, tokenizer: dict | None = None) -> dict:
    """manifest.json's content; `tokenizer` is copy_tokenizer's entry (kind + files), None when there is none."""
    from . import artifacts

    args, options = checkpoint.args, result.options
    quantization = options.quantization
    extra = {} if quantization is None else {"float_dtype": options.dtype_name, "quantization": quantization.manifest()}
    return {
        "format": "llama-export/1",
        "size": size_name(args),
        "args": args.to_dict(),
        "checkpoint": checkpoint.manifest_record(),
        "precision": options.precision,
        "opset": options.opset,
        "target": options.target,
        "fusion_counts": result.fusion_counts,
        "model": MODEL_FILE,
        "external_data": DATA_FILE,
        "tool": artifacts.tool_info(),
        "libraries": artifacts.library_versions(),
        "io": io_spec.io_spec_json(args, KV_DTYPE_NAMES[options.dtype_name]),
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
def progress_bar(checkpoint: Checkpoint, quiet: bool):
    """A rich bar over tensors when stderr is a terminal (erased if the export fails), else a no-op."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[tensor]}"))
    console = Console(stderr=True)
    # Only on a terminal: on a pipe rich prints just the last frame when it stops, which after a failure would sit
    # above the one-line error that scripts parse.
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task("tracing", total=len(checkpoint.names()), tensor="")

        def advance(name: str) -> None:
            bar.update(task, advance=1, description="weights", tensor=name)

        try:
            yield advance
        except BaseException:
            # A failed or interrupted export ends in a one-line error: erase the bar rather than leave it above.
            bar.live.transient = True
            raise


def _version() -> str:
    from importlib.metadata import version

    return version("llama-export")


__all__ = ["DATA_FILE", "MODEL_FILE", "ExportResult", "copy_tokenizer", "export_onnx", "export_to_folder",
           "find_tokenizer_for", "manifest_content", "progress_bar", "trace_graph"]
