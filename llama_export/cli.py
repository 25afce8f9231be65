"""Command line: parses options and calls library functions. Nothing else lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import UserError


class Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            return super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except UserError as exc:
            _fail(str(exc))
        except click.UsageError as exc:
            hint = f" (see llama-export {exc.ctx.info_name} --help)" if exc.ctx and exc.ctx.parent else ""
            _fail(f"{exc.format_message()}{hint}")
        except click.exceptions.Abort:
            _fail("aborted", code=130)
        except KeyboardInterrupt:
            _fail("interrupted", code=130)


def _fail(message: str, code: int = 2):
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(cls=Group)
@click.version_option(package_name="llama-export")
def main():
    """Export LLaMA-family models to ONNX, TensorRT engines and Triton model repositories."""


def model_options(f):
    """The options that choose a model's weights, shared by every command that loads one."""
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init.")(f)
    f = click.option("--random-init", is_flag=True, help="Random weights for --size (default for sizes other than tiny).")(f)
    f = click.option("--checkpoint", type=click.Path(path_type=Path),
                     help="Meta consolidated folder, Hugging Face folder, or llama-export safetensors folder.")(f)
    f = click.option("--size", help="A named size (llama-export sizes). Default: the built-in tiny model.")(f)
    return f


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


@main.command()
@model_options
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy decoding.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--sample-seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--tokenizer", type=click.Path(path_type=Path), help="tokenizer.model (default: next to the weights).")
@click.option("--backend", type=click.Choice(["torch"]), default="torch", show_default=True)
def generate(size, checkpoint, random_init, seed, prompt, max_new_tokens, temperature, top_p, sample_seed,
             tokenizer, backend):
    """Continue a prompt, streaming tokens to stdout."""
    from .exporter.checkpoints import load_model
    from .exporter.sources import TINY_ASSET, resolve_checkpoint
    from .exporter.tokenizer import Tokenizer, find_tokenizer
    from .validate.generation import Sampling, generate_tokens
    from .validate.runners import TorchRunner

    ckpt = resolve_checkpoint(size, checkpoint, random_init, seed)
    model = load_model(ckpt)
    if tokenizer is not None:
        tokenizer_path = tokenizer
    elif checkpoint is not None:
        tokenizer_path = find_tokenizer(checkpoint if checkpoint.is_dir() else checkpoint.parent)
    elif (size or "tiny").lower() == "tiny" and not random_init:
        tokenizer_path = find_tokenizer(TINY_ASSET)
    else:
        tokenizer_path = None
    if tokenizer_path is None:
        raise UserError(f"no tokenizer for {ckpt.description}; pass --tokenizer PATH to a tokenizer.model")
    tok = Tokenizer(tokenizer_path)
    if tok.vocab_size > ckpt.args.vocab_size:
        raise UserError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model only "
                        f"{ckpt.args.vocab_size}; pass the model's own tokenizer")
    runner = TorchRunner(model)
    ids = tok.encode(prompt)
    click.echo(prompt, nl=False)
    produced: list[int] = []
    shown = ""
    stream = generate_tokens(runner, ids, max_new_tokens, Sampling(temperature, top_p, sample_seed),
                             stop_ids=frozenset({tok.eos_id}), max_length=ckpt.args.max_seq_len)
    for token in stream:
        produced.append(token)
        # Decode the whole continuation each time: SentencePiece pieces only read right in context.
        text = tok.decode(ids[1:] + produced)[len(tok.decode(ids[1:])):]
        click.echo(text[len(shown):], nl=False)
        shown = text
    click.echo()


if __name__ == "__main__":
    main()
