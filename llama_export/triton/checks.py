"""Checks run on every config before it is written: Triton's schema, then what the schema cannot know.

Schema: the text must parse into `model_config_pb2.ModelConfig` (unknown fields, bad enums and type errors fail)
and parse back to the very message we built. Semantics: input/output names equal io_spec's, dims match the ONNX
graph or every engine profile, max_batch_size is 0 (our batch dim is explicit), the front end is decoupled and
no parameter is left unresolved.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from .. import io_spec
from ..config import ModelArgs
from ..errors import UserError
from . import protocol
from .configs import DATA_TYPES, render, spec_dims

_PLACEHOLDER = re.compile(r"\$\{|\{\{|<[A-Z_]+>|@[A-Z_]+@")


class ConfigError(UserError):
    """A config.pbtxt that Triton would reject or that disagrees with the model; names the model and field."""


def parse_config(text: str, where: str = "config.pbtxt") -> pb.ModelConfig:
    """Parse against Triton's schema; any error is a ConfigError naming `where`."""
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: not a valid Triton model config ({exc})") from None


def checked_text(config: pb.ModelConfig) -> str:
    """config → text, proven to round-trip through Triton's schema unchanged and to hold no placeholder."""
    text = render(config)
    parsed = parse_config(text, f"{config.name}/config.pbtxt")
    if parsed != config:
        raise ConfigError(f"{config.name}/config.pbtxt does not parse back to the config that was built")
    if _PLACEHOLDER.search(text):
        raise ConfigError(f"{config.name}/config.pbtxt holds an unresolved placeholder: "
                          f"{_PLACEHOLDER.search(text).group(0)}")
    return text


def _fail(config: pb.ModelConfig, message: str):
    raise ConfigError(f"{config.name}/config.pbtxt: {message}")


def check_model_io(config: pb.ModelConfig, args: ModelArgs, kv_dtype: str) -> None:
    """Names, order, data types and dims equal io_spec's; batch explicit (max_batch_size 0)."""
    if config.max_batch_size != 0:
        _fail(config, f"max_batch_size {config.max_batch_size}: the batch dim is explicit in every tensor, use 0")
    spec = io_spec.io_spec(args, kv_dtype)
    for side, tensors in (("input", config.input), ("output", config.output)):
        expected = spec[f"{side}s"]
        names = [t.name for t in tensors]
        if names != [t.name for t in expected]:
            missing = sorted({t.name for t in expected} - set(names))
            extra = sorted(set(names) - {t.name for t in expected})
            _fail(config, f"{side} names differ from io_spec (missing {missing}, unexpected {extra})")
        for tensor, want in zip(tensors, expected):
            if tensor.data_type != DATA_TYPES[want.dtype]:
                _fail(config, f"{side} {tensor.name} is {pb.DataType.Name(tensor.data_type)}, "
                              f"io_spec says {want.dtype}")
            if list(tensor.dims) != spec_dims(want.shape):
                _fail(config, f"{side} {tensor.name} dims {list(tensor.dims)} != io_spec {spec_dims(want.shape)}")


def onnx_dims(onnx_path: Path) -> dict[str, list[int]]:
    """Every graph input/output → Triton dims (-1 for symbolic), read without loading the weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = {}
    for value in [*model.graph.input, *model.graph.output]:
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in shape]
    return dims


def check_against_onnx(config: pb.ModelConfig, onnx_path: Path) -> None:
    graph = onnx_dims(onnx_path)
    for tensor in [*config.input, *config.output]:
        if tensor.name not in graph:
            _fail(config, f"{tensor.name} is not an input or output of {onnx_path.name}")
        if list(tensor.dims) != graph[tensor.name]:
            _fail(config, f"{tensor.name} dims {list(tensor.dims)} != {onnx_path.name} {graph[tensor.name]}")


def check_against_profiles(config: pb.ModelConfig, engine: dict) -> None:
    """Every input of every optimization profile: same rank, fixed dims equal at min/opt/max, and the
    instance group may use each profile."""
    profiles = engine["profiles"]
    inputs = {t.name: list(t.dims) for t in config.input}
    for name, shapes in profiles.items():
        if set(shapes) != set(inputs):
            _fail(config, f"inputs {sorted(inputs)} != the engine's {name} profile inputs {sorted(shapes)}")
        for input_name, (lo, opt, hi) in shapes.items():
            dims = inputs[input_name]
            if not len(dims) == len(lo) == len(opt) == len(hi):
                _fail(config, f"{input_name} has rank {len(dims)}, the {name} profile rank {len(lo)}")
            for axis, (d, a, b, c) in enumerate(zip(dims, lo, opt, hi)):
                if d != -1 and not d == a == b == c:
                    _fail(config, f"{input_name} dim {axis} is fixed at {d} but the {name} profile spans {a}..{c}")
                if d == -1 and axis == 0 and config.max_batch_size != 0:
                    _fail(config, "max_batch_size must be 0: the profiles carry the batch dim explicitly")
    wanted = [str(i) for i in range(len(profiles))]
    for group in config.instance_group:
        if list(group.profile) != wanted:
            _fail(config, f"instance group profiles {list(group.profile)} != the engine's {wanted}")
    if protocol.PARAM_TENSORRT_VERSION not in config.parameters:
        _fail(config, f"the {protocol.PARAM_TENSORRT_VERSION} parameter is missing")


def check_frontend(config: pb.ModelConfig, decoupled: bool = True) -> None:
    if config.backend != "python":
        _fail(config, f"backend {config.backend!r}: the generation front end runs on the python backend")
    if config.model_transaction_policy.decoupled != decoupled:
        _fail(config, f"model_transaction_policy.decoupled must be {str(decoupled).lower()} "
                      + ("so tokens stream" if decoupled else "(HTTP infer refuses decoupled models)"))
    names = {t.name for t in config.input}
    if protocol.TEXT_INPUT not in names:
        _fail(config, f"input {protocol.TEXT_INPUT} is missing")
    if {t.name for t in config.output} != {protocol.TEXT_OUTPUT, protocol.TOKEN_IDS}:
        _fail(config, f"outputs must be {protocol.TEXT_OUTPUT} and {protocol.TOKEN_IDS}")
    has_onnx = protocol.PARAM_ONNX_MODEL in config.parameters
    if has_onnx == (protocol.PARAM_PLAN_MODEL in config.parameters):
        _fail(config, f"needs exactly one of the {protocol.PARAM_ONNX_MODEL} / {protocol.PARAM_PLAN_MODEL} "
                      "parameters")
    for key in (protocol.PARAM_MODEL_ARGS, protocol.PARAM_MAX_INPUT, protocol.PARAM_MAX_SEQ):
        if not config.parameters[key].string_value:
            _fail(config, f"parameter {key} is missing or empty")


__all__ = ["ConfigError", "check_against_onnx", "check_against_profiles", "check_frontend", "check_model_io",
           "checked_text", "onnx_dims", "parse_config"]
