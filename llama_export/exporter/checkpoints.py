"""Checkpoints: where the weights come from.

Every source yields tensors under the reference model's names (Meta's names) in the reference model's
rotate-half RoPE layout, one tensor at a time, so the exporter can stream a 70B checkpoint with bounded memory.

Sources (`open_checkpoint` picks one from what a folder holds):
- Meta consolidated: `params.json` + `consolidated.NN.pth` model-parallel shards (meta_format.py).
- Hugging Face: `config.json` + `model.safetensors` or a sharded index (hf_format.py).
- SafetensorsCheckpoint: our own format, `params.json` (ModelArgs) + `model.safetensors` (format=llama-export).
- RandomCheckpoint (random_init.py): a named size + seed. Each tensor is generated from its own seed, so
  streaming one tensor gives the same values as building the whole model (uniform with std 0.02, norms ones).

Loading is strict and fails early: every source checks the tensor names and shapes it *would* produce against
`expected_shapes(args)` from file headers alone (safetensors headers, mmapped .pth shards) before any data is
read, and each problem is one `UserError` line naming the file or tensor and what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from ..config import SIZES, ModelArgs
from ..errors import UserError
from ..model import Transformer

OWN_FORMAT = "llama-export"


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every tensor the reference model has, with its shape, in model order."""
    d, kv, hd, hid = args.dim, args.kv_heads * args.head_dim, args.n_heads * args.head_dim, args.hidden_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, d)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (hd, d),
            p + "attention.wk.weight": (kv, d),
            p + "attention.wv.weight": (kv, d),
            p + "attention.wo.weight": (d, hd),
            p + "feed_forward.w1.weight": (hid, d),
            p + "feed_forward.w2.weight": (d, hid),
            p + "feed_forward.w3.weight": (hid, d),
            p + "attention_norm.weight": (d,),
            p + "ffn_norm.weight": (d,),
        }
    shapes["norm.weight"] = (d,)
    if not args.tie_embeddings:  # tied: the embedding is the output projection
        shapes["output.weight"] = (args.vocab_size, d)
    return shapes


def output_weight_name(args: ModelArgs) -> str:
    """The tensor the final projection multiplies by: output.weight, or the embedding when they are tied."""
    return "tok_embeddings.weight" if args.tie_embeddings else "output.weight"


class Checkpoint:
    """A source of weights. Subclasses implement `tensor` (and may override `iter_tensors`)."""

    args: ModelArgs
    description: str
    allow_nonfinite: bool = False  # --allow-nonfinite: export NaN/Inf weights instead of refusing them

    def names(self) -> list[str]:
        return list(expected_shapes(self.args))

    def tensor(self, name: str) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement tensor()")

    def iter_tensors(self, dtype: torch.dtype | None = None,
                     buffers: Buffers | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) in model order, one at a time, in the checkpoint's own dtype. `dtype` is a hint for
        sources that can produce it directly (random init draws into it); others ignore it, callers convert.
        `buffers(numel, dtype)`, when given, is where sources that make their tensors (random init) put them:
        a yielded tensor may then share memory with a later one, so only a caller that is done with each
        tensor before the next-but-one arrives may pass it (weights.stream_weights)."""
        for name in self.names():
            yield name, self.tensor(name)

    def fingerprint(self) -> str:
        """sha256 identifying the weights (recorded in the manifest)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement fingerprint()")

    def source(self) -> dict:
        """Where the weights come from, as data a later command reopens (sources.reopen_source): {"format":
        "hf"|"meta"|"own"|"builtin"|"random", "path": absolute folder, or "size"/"seed" for random weights}.
        Sources nothing can reopen (weights built in memory) say so; validating their export needs --checkpoint."""
        return {"format": "in-memory"}

    def manifest_record(self) -> dict:
        """The manifest's `checkpoint` entry: the source, its fingerprint, and a description for display only
        (never parsed: the source is reopened from the fields)."""
        return {**self.source(), "fingerprint": self.fingerprint(), "description": self.description}

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        return {n: (t if dtype is None else t.to(dtype)) for n, t in map(check_float, self.iter_tensors())}


def check_float(item: tuple[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """(name, tensor) unchanged when the tensor is floating point; an integer or bool weight would be cast to
    values that mean nothing (an int32 q_proj exports as zeros), so it is refused naming the tensor."""
    name, tensor = item
    if not tensor.is_floating_point():
        raise UserError(f"checkpoint tensor {name} is {str(tensor.dtype).removeprefix('torch.')}, not a "
                        "floating-point type; a LLaMA weight must be float (re-convert the checkpoint)")
    return item


def check_finite(name: str, tensor: torch.Tensor, dtype_name: str) -> None:
    """Refuse a float tensor holding NaN or Inf. aminmax propagates NaN and shows ±Inf, in one pass without
    allocating (it runs in the stream's write thread, next to the hashing, and costs less)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)
    if not (math.isfinite(low.item()) and math.isfinite(high.item())):
        raise UserError(f"checkpoint tensor {name} holds NaN or Inf values (in the checkpoint, or out of range "
                        f"for {dtype_name}); fix the weights, or pass --allow-nonfinite to export them anyway")


# (numel, dtype) -> a flat contiguous buffer of at least numel values (weights.AlternatingBuffers)
Buffers = Callable[[int, torch.dtype], torch.Tensor]

# ---------------------------------------------------------------------------------------------------------------
# Strict checks shared by every file format


def some(names: Iterable[str], limit: int = 4) -> str:
    """'a, b, c, d and 3 more'."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def read_json(path: Path, what: str = "") -> dict:
    """A JSON object from `path`, or a UserError saying why not."""
    if not path.is_file():
        raise UserError(f"{path} is missing{what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix or re-download it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def args_from(make: Callable[[], ModelArgs], path: Path) -> ModelArgs:
    """Build ModelArgs, turning bad or inconsistent values into a UserError naming the config file."""
    try:
        return make()
    except (TypeError, ValueError, KeyError, ArithmeticError) as exc:  # ArithmeticError: e.g. 0 heads
        detail = f"lacks the key {exc.args[0]!r}" if isinstance(exc, KeyError) else f"is inconsistent: {exc}"
        raise UserError(f"{path} {detail}; fix it or use the file that came with these weights") from None


def with_known_size(args: ModelArgs, max_seq_len: int | None) -> ModelArgs:
    """Name the family (and context length, when the file does not say) after a matching size in SIZES."""
    for known in SIZES.values():
        if args.replace(family=known.family, max_seq_len=known.max_seq_len) == known:
            return args.replace(family=known.family, max_seq_len=max_seq_len or known.max_seq_len)
    return args if max_seq_len is None else args.replace(max_seq_len=max_seq_len)


SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                      "U16", "U32", "U64", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}


def read_safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({tensor name: shape}, metadata) from a .safetensors header, checking the file is complete.

    Reads only the header, so a 100 GB checkpoint is checked in milliseconds.
    """
    what = "re-download or re-save it"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if n <= 1 or n > min(size - 8, 1 << 28):
                raise UserError(f"{path} is not a safetensors file (or is cut short inside its header); {what}")
            raw = f.read(n)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
        metadata = header.pop("__metadata__", None) or {}
        shapes, end = {}, 0
        for name, entry in header.items():
            begin, stop = entry["data_offsets"]
            if entry["dtype"] not in SAFETENSORS_DTYPES or not all(isinstance(s, int) for s in entry["shape"]):
                raise ValueError(name)
            shapes[name] = tuple(entry["shape"])
            end = max(end, stop, begin)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a safetensors file (its header is not a valid safetensors header); "
                        f"{what}") from None
    if 8 + n + end > size:
        raise UserError(f"{path} is truncated: its header describes {8 + n + end} bytes but the file has {size}; "
                        f"{what}")
    return shapes, dict(metadata)


class SafetensorsFiles:
    """Tensors read on demand from open .safetensors files (one handle per file)."""

    def __init__(self):
        self._handles: dict[Path, object] = {}

    def __getstate__(self) -> dict:
        return {"_handles": {}}  # open handles do not pickle; a copy (the stream's process) reopens on demand

    def get(self, path: Path, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        try:
            if path not in self._handles:
                self._handles[path] = safe_open(str(path), framework="pt")
            return self._handles[path].get_tensor(name)
        except SafetensorError as exc:
            raise UserError(f"cannot read {name} from {path} ({exc}); the file is damaged: re-download it") from None


# What each tensor axis must equal, so a config that contradicts the weights is named as such rather than as a
# wall of mis-shaped tensors. Quantity -> [(name suffix, axis)].
_AXES = {
    "dim": [("tok_embeddings.weight", 1), ("norm.weight", 0), ("output.weight", 1), ("attention.wq.weight", 1),
            ("attention.wo.weight", 0), ("feed_forward.w1.weight", 1), ("feed_forward.w2.weight", 0)],
    "vocab_size": [("tok_embeddings.weight", 0), ("output.weight", 0)],
    "n_kv_heads": [("attention.wk.weight", 0), ("attention.wv.weight", 0)],
    "hidden_dim": [("feed_forward.w1.weight", 0), ("feed_forward.w3.weight", 0), ("feed_forward.w2.weight", 1)],
}
_LAYER = re.compile(r"layers\.(\d+)\.")
META_KEYS = {"dim": "dim", "n_layers": "n_layers", "vocab_size": "vocab_size", "n_kv_heads": "n_kv_heads",
             "hidden_dim": "hidden_dim"}


def check_tensors(args: ModelArgs, found: dict[str, tuple[int, ...]], *, source: str, config: str,
                  unmapped: Iterable[str] = (), label: Callable[[str], str] = str,
                  keys: dict[str, str] = META_KEYS) -> None:
    """Raise a UserError unless `found` (our names -> shapes) is exactly what `args` needs.

    `unmapped` are source tensor names with no counterpart in the model; `label` turns our names back into the
    source's names for messages; `keys` names each hyper-parameter as the config file spells it.
    """
    expected = expected_shapes(args)
    short = Path(config).name  # the full path is in the message once already
    layers = {int(m.group(1)) for n in found if (m := _LAYER.match(n))}
    if layers and max(layers) + 1 != args.n_layers:
        raise UserError(f"{config} says {keys['n_layers']}={args.n_layers} but {source} holds {max(layers) + 1} "
                        f"layers; {short} does not belong to these weights: fix it or use the matching one")
    wanted = {"dim": args.dim, "vocab_size": args.vocab_size, "n_kv_heads": args.kv_heads * args.head_dim,
              "hidden_dim": args.hidden_dim}
    for quantity, axes in _AXES.items():
        seen = [(n, found[n]) for n in found if any(n.endswith(s) and len(found[n]) > a for s, a in axes)]
        values = {shape[a] for n, shape in seen for s, a in axes if n.endswith(s)}
        if len(seen) >= 2 and len(values) == 1 and wanted[quantity] not in values:
            (got,) = values
            said = f"{keys[quantity]}={getattr(args, quantity)}"
            if quantity == "n_kv_heads":
                said = f"{keys[quantity]}={args.kv_heads} (k/v width {args.kv_heads * args.head_dim})"
                got = f"width {got}"
            elif quantity == "hidden_dim" and keys[quantity] == "hidden_dim":
                said += f" (from multiple_of={args.multiple_of}, ffn_dim_multiplier={args.ffn_dim_multiplier})"
            name, shape = seen[0]
            raise UserError(f"{config} says {said} but the tensors say {got} ({label(name)} is {fmt_shape(shape)}"
                            f" in {source}); {short} does not belong to these weights: fix it or use the "
                            "matching one")
    missing = [n for n in expected if n not in found]
    if missing:
        raise UserError(f"{source} is missing {len(missing)} tensor(s): {some(map(label, missing))}; the "
                        "checkpoint is incomplete: re-download or re-convert it")
    unexpected = [*unmapped, *(label(n) for n in found if n not in expected)]
    if unexpected:
        raise UserError(f"{source} has {len(unexpected)} unexpected tensor(s): {some(unexpected)}; is it a LLaMA "
                        f"checkpoint, and is {config} the one for these weights?")
    wrong = [n for n in expected if tuple(found[n]) != expected[n]]
    if wrong:
        shown = "; ".join(f"{label(n)} is {fmt_shape(found[n])}, expected {fmt_shape(expected[n])}"
                          for n in wrong[:3])
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise UserError(f"{source} has {len(wrong)} mis-shaped tensor(s): {shown}{more}; the checkpoint is damaged "
                        f"or {short} does not match it")


def files_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the named files' own sha256s, in order (config first, then weights)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Our own format


class SafetensorsCheckpoint(Checkpoint):
    """Our own format: `params.json` (ModelArgs fields) + `model.safetensors` (reference names, rotate-half)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        params = self.folder / "params.json"
        self.args = args_from(lambda: ModelArgs.from_dict(read_json(params)), params)
        self.path = self.folder / "model.safetensors"
        if not self.path.is_file():
            raise UserError(f"{self.path} is missing; a llama-export checkpoint has params.json + model.safetensors")
        shapes, metadata = read_safetensors_header(self.path)
        if metadata.get("format") != OWN_FORMAT:
            raise UserError(f"{self.path} is not a llama-export checkpoint (no format={OWN_FORMAT} metadata); "
                            "write it with llama_export.exporter.checkpoints.save_checkpoint")
        if metadata.get("rope_layout", "rotate_half") != "rotate_half":
            raise UserError(f"{self.path} says rope_layout={metadata['rope_layout']}; only rotate_half is supported")
        check_tensors(self.args, shapes, source=str(self.path), config=str(params))
        self._files = SafetensorsFiles()
        self.description = str(self.folder)

    def tensor(self, name: str) -> torch.Tensor:
        return self._files.get(self.path, name)

    def fingerprint(self) -> str:
        return safetensors_content_sha256(self.path)

    def source(self) -> dict:
        from .sources import TINY_ASSET  # the asset moves with the installed package: reopened from there

        if self.folder.resolve() == TINY_ASSET.resolve():
            return {"format": "builtin", "size": "tiny", "path": str(TINY_ASSET)}
        return {"format": "own", "path": str(self.folder.resolve())}


def save_checkpoint(state_dict: dict[str, torch.Tensor], args: ModelArgs, folder: Path,
                    dtype: torch.dtype | None = None) -> None:
    """Write our own format (see SafetensorsCheckpoint)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: (t if dtype is None else t.to(dtype)).contiguous() for n, t in state_dict.items()
               if not (n == "output.weight" and args.tie_embeddings)}  # tied: the embedding is stored once
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": OWN_FORMAT, "rope_layout": "rotate_half"})
    (folder / "params.json").write_text(json.dumps(args.to_dict(), indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint folder (or a file inside one), detecting its format. Raises UserError when unusable.

    Meta consolidated (`consolidated.*.pth`), llama-export (`params.json` + `model.safetensors` with our
    metadata), Hugging Face (`config.json` + `model.safetensors` or `model.safetensors.index.json`).
    """
    from .hf_format import HFCheckpoint
    from .meta_format import MetaCheckpoint

    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a checkpoint folder (or use --size for random "
                        "weights)")
    folder = path
    if path.is_file():
        if path.suffix == ".safetensors":
            read_safetensors_header(path)  # a broken file is the first thing to report
        folder = path.parent
    has = {p.name for p in folder.iterdir()}
    if any(re.fullmatch(r"consolidated\.\d+\.pth", n) for n in has):
        return MetaCheckpoint(folder)
    if "model.safetensors" in has and "params.json" in has:
        _, metadata = read_safetensors_header(folder / "model.safetensors")
        if metadata.get("format") == OWN_FORMAT or "config.json" not in has:
            return SafetensorsCheckpoint(folder)
    if "config.json" in has:
        if "model.safetensors" in has or "model.safetensors.index.json" in has:
            return HFCheckpoint(folder)
        if any(n.endswith(".bin") for n in has):
            raise UserError(f"{folder} holds a Hugging Face checkpoint in .bin format; only safetensors is "
                            "supported: re-save it with save_pretrained(..., safe_serialization=True)")
        raise UserError(f"{folder} has config.json but no model.safetensors or model.safetensors.index.json")
    raise UserError(f"{path} is not a recognised checkpoint: expected a folder with params.json + "
                    "consolidated.NN.pth (Meta), config.json + model.safetensors (Hugging Face), or params.json + "
                    "model.safetensors (llama-export)")


def load_model(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32) -> Transformer:
    """The reference model holding the checkpoint's tensors in `dtype` (Transformer.from_state_dict)."""
    return Transformer.from_state_dict(checkpoint.args, checkpoint.state_dict(dtype))


def safetensors_content_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """sha256 of a .safetensors file with its JSON header in canonical form (sorted keys).

    safetensors writes `__metadata__` keys in hash-map order (upstream issue #584), so identical weights can
    give different file bytes; this digest depends only on the header's content and the tensor bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        digest.update(json.dumps(json.loads(f.read(n)), sort_keys=True, separators=(",", ":")).encode())
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["Checkpoint", "SafetensorsCheckpoint", "check_tensors", "expected_shapes", "file_sha256", "load_model",
           "open_checkpoint", "output_weight_name", "read_safetensors_header", "save_checkpoint"]
