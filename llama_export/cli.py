"""Command line: parses options and calls library functions. Nothing else lives here."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .cli_options import FiniteFloat, export_options, model_options, utf8_prompts
from .errors import Terminated, UserError, describe_os_error, terminate_as_interrupt


class Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            with terminate_as_interrupt():
                return super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except UserError as exc:
            _fail(str(exc))
        except _Terminated:
            _fail("terminated (SIGTERM); nothing was left half-written", code=143)
        except OSError as exc:  # a full disk, a read-only or busy mount, a permission: the system's word, one line
            _fail(describe_os_error(exc))
        except click.UsageError as exc:
            hint = f" (see llama-export {exc.ctx.info_name} --help)" if exc.ctx and exc.ctx.parent else ""
            _fail(f"{exc.format_message()}{hint}")
        except click.exceptions.Abort:
            _fail("aborted", code=130)
        except KeyboardInterrupt:
            _fail("interrupted", code=130)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Terminated:  # every cleanup below has run; click would print a blank line and raise Abort
            raise _Terminated from None


class _Terminated(Exception):
    """SIGTERM, past the command's cleanups, on its way to exit code 143."""


def _fail(message: str, code: int = 2):
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(cls=Group)
@click.version_option(package_name="llama-export")
def main():
    """Export LLaMA-family models to ONNX, TensorRT engines and Triton model repositories."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def sizes(as_json: bool):
    """List the named model sizes and their exact parameter counts."""
    from .config import SIZES, size_summary

    rows = [size_summary(name, args) for name, args in SIZES.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "params", "dim", "layers", "heads", "kv heads", "hidden", "vocab", "rope θ")
    for r in rows:
        table.add_row(r["name"], f"{r['params']:,}", str(r["dim"]), str(r["n_layers"]), str(r["n_heads"]),
                      str(r["n_kv_heads"]), str(r["hidden_dim"]), str(r["vocab_size"]),
                      f"{r['rope_theta']:g}" + (" (scaled)" if r["rope_scaling"] else ""))
    Console(width=max(Console().width, 120)).print(table)


def _with_quantization(options, ckpt, calibration, calibration_samples, alpha, quantize_lm_head,
                       quantize_embeddings, block_size=None, int4_method=None, quiet=False):
    """`options` with the quantization the command line asks for (int8 and AWQ calibrate on `ckpt` here)."""
    from dataclasses import replace

    from .exporter.options import prepare_quantization

    return replace(options, quantization=prepare_quantization(
        ckpt, options.precision, calibration, alpha, calibration_samples, quantize_lm_head, quantize_embeddings,
        None if block_size is None else int(block_size), int4_method, None if quiet else _layer_progress("awq")))


def _layer_progress(stage: str):
    """progress(done, total) printing one stderr line per layer with the time left at the pace so far: AWQ
    searches minutes per layer at 7B, hours in all, and a silent terminal looks hung."""
    started = time.monotonic()

    def report(done: int, total: int) -> None:
        elapsed = time.monotonic() - started
        left = elapsed / done * (total - done)
        click.echo(f"{stage}: layer {done}/{total} searched, {_duration(elapsed)} elapsed, about {_duration(left)} "
                   f"left", err=True)
    return report


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def default_out(size: str | None, checkpoint: Path | None, precision: str, float_dtype: str | None = None) -> Path:
    name = checkpoint.absolute().name if checkpoint is not None else (size or "tiny").lower()
    suffix = f"-{float_dtype}" if float_dtype and float_dtype != precision else ""
    return Path("out") / f"{name}-{precision}{suffix}"


@main.command()
@model_options
@export_options
def export(size, checkpoint, random_init, seed, precision, opset, target, out, quiet, float_dtype, calibration,
           calibration_samples, alpha, quantize_lm_head, quantize_embeddings, force, allow_nonfinite, block_size,
           int4_method):
    """Export to ONNX: DIR/model.onnx + model.onnx.data + manifest.json (weights streamed, bounded memory)."""
    from .exporter.artifacts import check_replaceable
    from .exporter.export import export_to_folder
    from .exporter.options import ExportOptions
    from .exporter.sources import resolve_checkpoint

    options = ExportOptions(precision, opset, target, float_dtype)  # checked before any weights are opened
    ckpt = resolve_checkpoint(size, checkpoint, random_init, seed)
    ckpt.allow_nonfinite = allow_nonfinite
    out = check_replaceable(out or default_out(size, checkpoint, precision, float_dtype), force=force,
                            protect=[checkpoint])  # before calibration
    options = _with_quantization(options, ckpt, calibration, calibration_samples, alpha, quantize_lm_head,
                                 quantize_embeddings, block_size, int4_method, quiet)
    folder = export_to_folder(ckpt, out, options, quiet=quiet, force=force)
    if not quiet:
        click.echo(f"wrote {folder}", err=True)


@main.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@model_options
@click.option("--prompt", "prompts", required=True, multiple=True, callback=utf8_prompts,
              help="Text to continue; repeat it to run several prompts as one batch (printed in order).")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--temperature", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="0 is greedy decoding.")
@click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--truncate", is_flag=True,
              help="Keep a prompt's last tokens when it and --max-new-tokens exceed the model's context.")
@click.option("--sample-seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="A tokenizer folder or file: tokenizer.json, or tokenizer.model (SentencePiece or Llama 3 "
                   "tiktoken) (default: the one next to the weights).")
@click.option("--chat", is_flag=True,
              help="Each prompt is a user message: wrap it in the tokenizer's chat template (tokenizer_config.json).")
@click.option("--backend", type=click.Choice(["torch", "ort", "tensorrt"]), default=None,
              help="torch (default; the reference model), ort (ONNX Runtime on an exported FOLDER) or tensorrt "
                   "(FOLDER's engine; NVIDIA GPU).")
def generate(folder, size, checkpoint, random_init, seed, prompts, max_new_tokens, temperature, top_p, truncate,
             sample_seed, tokenizer, chat, backend):
    """Continue a prompt, streaming tokens to stdout (several prompts: one batch, each printed when done); stops
    at the tokenizer's EOS and generation_config.json's eos_token_id. FOLDER: an exported output folder (runs with
    --backend ort, or --backend tensorrt for its engine)."""
    from .exporter.tokenization import load_tokenizer
    from .triton.streaming import TextStreamer
    from .validate.batching import Sequence, generate_batch
    from .validate.generation import Sampling, fit_prompt

    engine = None  # FOLDER's engine section with --backend tensorrt
    if folder is not None:
        runner, built, args, what, engine = _folder_runner(folder, backend or "ort", size, checkpoint, random_init)
        tok = load_tokenizer(tokenizer) if tokenizer is not None else built.tokenizer()
    else:
        if backend in ("ort", "tensorrt"):
            raise UserError(f"--backend {backend} runs an exported folder: llama-export generate DIR --backend "
                            f"{backend} (create DIR with llama-export {'export' if backend == 'ort' else 'build'})")
        from .exporter.checkpoints import load_model
        from .exporter.sources import resolve_checkpoint
        from .validate.runners import TorchRunner

        ckpt = resolve_checkpoint(size, checkpoint, random_init, seed)
        runner, args, what = TorchRunner(load_model(ckpt)), ckpt.args, ckpt.description
        tok = _checkpoint_tokenizer(tokenizer, checkpoint, size, random_init)
    if tok is None:
        raise UserError(f"no tokenizer for {what}; pass --tokenizer PATH to a tokenizer folder, tokenizer.json or "
                        "tokenizer.model")
    if tok.vocab_size > args.vocab_size:
        raise UserError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model only "
                        f"{args.vocab_size}; pass the model's own tokenizer")
    sampling = Sampling(temperature, top_p, sample_seed)
    context, limits = args.max_seq_len, None
    if engine is not None:  # before the prompts are fitted, so --truncate can keep within the engine's limits
        from .engine.profiles import ProfileLimits

        limits = ProfileLimits.from_engine(engine, str(folder))
        limits.check_run(len(prompts), None, max_new_tokens, "", f"--max-new-tokens {max_new_tokens}")
        if truncate:
            context = min(context, limits.max_seq, limits.max_input + max_new_tokens)
    names = ["the prompt"] if len(prompts) == 1 else [f"prompt {i + 1}" for i in range(len(prompts))]
    prompt_ids = [fit_prompt(tok.prompt_ids(p, chat), max_new_tokens, context, truncate, name)
                  for p, name in zip(prompts, names)]
    if engine is not None:  # every length is checked against the engine before its GPU runtime loads
        from .engine.runtime import TensorRTRunner

        for ids, name in zip(prompt_ids, names):
            limits.check_run(len(prompts), len(ids), max_new_tokens, f"{name} ({len(ids)} tokens)",
                             f"--max-new-tokens {max_new_tokens}")
        runner = TensorRTRunner(built.folder / engine["file"], args, engine)
    sequences = [Sequence(ids, max_new_tokens, sampling, tok.stop_ids, args.max_seq_len) for ids in prompt_ids]
    # Decode whole continuations (TextStreamer): SentencePiece and byte-level pieces only read right in context.
    streamers = {id(s): TextStreamer(tok.decode, s.prompt_ids) for s in sequences}
    streaming = len(prompts) == 1

    def echo(prompt: str) -> str:  # a continuation reads on from its prompt; a chat reply stands alone
        return "" if chat else prompt

    if streaming:
        click.echo(echo(prompts[0]), nl=False)

    def show(update):
        if update.token is not None:
            text = streamers[id(update.sequence)].push(update.token)
            if streaming:
                click.echo(text, nl=False)

    try:
        generate_batch(runner, sequences, on_update=show)
    finally:
        if hasattr(runner, "close"):  # the engine's execution context
            runner.close()
    for prompt, sequence in zip(prompts, sequences):
        streamer = streamers[id(sequence)]
        tail = streamer.finish()
        click.echo(tail if streaming else echo(prompt) + streamer.emitted)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--repo", type=click.Path(path_type=Path), help="Repository folder (default: FOLDER/triton).")
@click.option("--name", help="Model name prefix (default: the size name, or llama).")
@click.option("--instances", type=click.IntRange(min=1), default=2, show_default=True,
              help="Instances of the unary front end (and of the streaming one with --no-batching).")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="In-flight batching in the streaming front end; --no-batching serves requests one by one.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most sequences decoding together (more wait in the queue).")
@click.option("--max-tokens-in-flight", type=click.IntRange(min=1), default=None,
              help="Most KV tokens (prompt + max_new_tokens) reserved over the batch [max-batch x context].")
@click.option("--max-prefill-tokens", type=click.IntRange(min=1), default=None,
              help="Most padded tokens (joining requests x their longest prompt) prefilled in one call between two "
                   "decode steps [the longest prompt accepted].")
@click.option("--force", is_flag=True, help="Replace model folders of the same names that llama-export did not write.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of FOLDER's files (sizes are always checked).")
def triton(folder, repo, name, instances, batching, max_batch, max_tokens_in_flight, max_prefill_tokens, force,
           no_verify):
    """Write a Triton model repository for an exported/built FOLDER (ONNX Runtime, TensorRT plan, streaming front end)."""
    try:
        from .triton.repository import write_repository
    except ImportError as exc:  # tritonclient (the config schema) is an optional extra
        raise UserError(f"llama-export triton needs {exc.name}: pip install 'llama-export[triton]'") from None

    written = write_repository(folder, repo or Path(folder) / "triton", name=name, instances=instances,
                               batching=batching, max_batch=max_batch, max_tokens=max_tokens_in_flight,
                               max_prefill_tokens=max_prefill_tokens, force=force, verify=not no_verify)
    click.echo(f"wrote {written.path}: {', '.join(written.models.values())}", err=True)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=0), default=32, show_default=True,
              help="Decode steps after the prompt (teacher-forced and free-running).")
@click.option("--prompt-tokens", type=click.IntRange(min=2), default=64, show_default=True,
              help="Prompt length in tokens (held-out corpus text when FOLDER has a tokenizer).")
@click.option("--bisect", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Per-layer bisection: auto runs it when the gate fails.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="The weights FOLDER was exported from (default: what its manifest names).")
@click.option("--layer-major", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="One decoder block in memory at a time (teacher-forced only); auto: when the whole model "
                   "does not fit in memory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of FOLDER's files (sizes are always checked).")
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True,
              help="The candidate: ort (ONNX Runtime on model.onnx) or tensorrt (FOLDER's engine; NVIDIA GPU).")
def validate(folder, steps, prompt_tokens, bisect, checkpoint, layer_major, as_json, quiet, no_verify, backend):
    """Compare an exported FOLDER with the Torch reference over prefill + decode; exit 1 if the gate fails.

    Writes FOLDER/report/report.json and report.html (FOLDER/report-tensorrt/ with --backend tensorrt)."""
    from .validate.pipeline import validate_build

    progress = None if quiet else (lambda stage: click.echo(f"validate: {stage}", err=True))
    report = validate_build(folder, steps=steps, prompt_tokens=prompt_tokens, bisect=bisect,
                            checkpoint=checkpoint, progress=progress, layer_major=layer_major,
                            verify=not no_verify, backend=backend)
    summary = report.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for check in summary["checks"]:
            mark = "ok  " if check["passed"] else "FAIL"
            click.echo(f"{mark} {check['name']:<10} {check['value']:.4g}  (limit {check['limit']:.4g}, "
                       f"{check['rule']})")
        if summary["first_bad_layer"] is not None:
            click.echo(f"first layer whose error jumps: {summary['first_bad_layer']}")
        click.echo(f"{'PASS' if report.passed else 'FAIL'} ({summary['precision']}); report: {summary['report']}")
    sys.exit(0 if report.passed else 1)


def _folder_runner(folder, backend, size, checkpoint, random_init):
    """(runner, Artifacts, args, description, engine section) for an exported folder: the ORT runner and None, or
    with --backend tensorrt None and the engine section (the caller makes the engine's runner once the run is
    checked against the engine's limits)."""
    from .exporter.artifacts import load_manifest
    from .validate.runners import OrtRunner

    if size is not None or checkpoint is not None or random_init:
        raise UserError("give either an exported FOLDER or --size/--checkpoint, not both")
    if backend == "torch":
        raise UserError("--backend torch runs a checkpoint, not an exported folder; use --backend ort or tensorrt "
                        "on FOLDER, or --checkpoint PATH for the torch reference")
    built = load_manifest(folder)
    if backend == "ort":
        return OrtRunner(built.model_path, built.args), built, built.args, str(folder), None
    from .engine.runtime import engine_section

    return None, built, built.args, str(folder), engine_section(built)


def _checkpoint_tokenizer(tokenizer, checkpoint, size, random_init):
    """--tokenizer, else the checkpoint folder's, else the tiny asset's for the trained tiny model; None otherwise."""
    from .exporter.sources import TINY_ASSET
    from .exporter.tokenization import find_tokenizer, load_tokenizer

    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if checkpoint is not None:
        return find_tokenizer(checkpoint if checkpoint.is_dir() else checkpoint.parent)
    if (size or "tiny").lower() == "tiny" and not random_init:
        return find_tokenizer(TINY_ASSET)
    return None


@main.command()
@model_options
@export_options
@click.option("--engine", type=click.Choice(["auto", "require", "skip"]), default="auto", show_default=True,
              help="auto: build when a TensorRT builder is installed; require: fail (exit 2) when none is.")
@click.option("--builder", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto", show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), help="Engine profiles: largest batch (default 1).")
@click.option("--max-input", type=click.IntRange(min=1), help="Engine prefill profile: longest prompt.")
@click.option("--max-seq", type=click.IntRange(min=2),
              help="Engine decode profile: KV cache capacity (default min(context, 2048)).")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="TensorRT timing cache, read and updated.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Compare with the Torch reference and write report/ (exit 1 when the gate fails).")
@click.option("--steps", type=click.IntRange(min=0), default=32, show_default=True, help="Validation decode steps.")
@click.option("--layer-major", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Validate one decoder block in memory at a time (auto: when the whole model does not fit).")
@click.option("--triton/--no-triton", default=None,
              help="Write triton/ (default: when tritonclient is installed).")
def build(size, checkpoint, random_init, seed, precision, opset, target, out, quiet, float_dtype, calibration,
          calibration_samples, alpha, quantize_lm_head, quantize_embeddings, engine, builder, max_batch,
          max_input, max_seq, timing_cache, validate, steps, layer_major, triton, force, allow_nonfinite,
          block_size, int4_method):
    """Export, fuse, build an engine, validate and write a Triton repository into one output folder."""
    from .build import BuildOptions, default_limits
    from .build import build as run_build
    from .exporter.artifacts import check_replaceable
    from .exporter.options import ExportOptions
    from .exporter.sources import resolve_checkpoint

    export = ExportOptions(precision, opset, target, float_dtype)  # checked before any weights are opened
    ckpt = resolve_checkpoint(size, checkpoint, random_init, seed)
    ckpt.allow_nonfinite = allow_nonfinite
    out = check_replaceable(out or default_out(size, checkpoint, precision, float_dtype), force=force,
                            protect=[checkpoint])  # before calibration
    export = _with_quantization(export, ckpt, calibration, calibration_samples, alpha, quantize_lm_head,
                                quantize_embeddings, block_size, int4_method, quiet)
    options = BuildOptions(export=export, engine=engine, builder=builder,
                           limits=default_limits(ckpt.args.max_seq_len, max_batch, max_input, max_seq),
                           timing_cache=timing_cache, validate=validate, validate_steps=steps, triton=triton,
                           layer_major=layer_major)
    say = (lambda _m: None) if quiet else (lambda message: click.echo(f"build: {message}", err=True))
    result = run_build(ckpt, out, options, quiet=quiet, say=say, force=force)
    for note in result.notes:
        say(note)
    if result.passed is not None:
        say(f"validation {'PASSED' if result.passed else 'FAILED'}: {result.report}/report.html")
    click.echo(str(result.folder))
    sys.exit(1 if result.passed is False else 0)


@main.command("engine-info")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the engine manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of FOLDER's files (sizes are always checked).")
def engine_info(folder, as_json, no_verify):
    """Show what FOLDER's engine was built with: builder and version, targets, profiles, plan sha256."""
    from .build import engine_info as read_engine_info
    from .build import format_engine_info

    info = read_engine_info(folder, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    try:
        text = format_engine_info(info)
    except (KeyError, TypeError, IndexError, AttributeError, StopIteration) as exc:
        raise UserError(f"{info['folder']}/manifest.json has a damaged engine section ({type(exc).__name__}: "
                        f"{exc}); rebuild {info['folder']}") from None
    click.echo(text)


def run() -> None:
    """The `llama-export` program: `main`, then exit without tearing the interpreter down.

    Why: after a big export, Python's teardown (freeing the traced program, torch's caches and modules) costs
    seconds of CPU (docs/BENCHMARKS.md, "Export memory and time") and changes nothing on disk: every output is
    written, fsynced and renamed before a command returns. Library callers and tests call `main`, which exits
    normally."""
    import logging
    import os

    code = 0
    try:
        main()
    except SystemExit as exc:  # sys.exit semantics: None is 0, an int is the code, anything else is printed, 1
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            click.echo(exc.code, err=True)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
