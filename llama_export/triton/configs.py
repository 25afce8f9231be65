"""Triton `config.pbtxt` contents, built as `model_config_pb2.ModelConfig` protobufs (right by construction).

Three kinds of model:
- `onnxruntime` backend on model.onnx (+ external data): the raw KV-cache graph;
- `tensorrt_plan` on engine.plan: the same I/O, one instance group that may use every optimization profile;
- the generation front end on the `python` backend: decoupled so tokens stream, plus a unary sibling.
Our batch dim is explicit in every tensor (io_spec), so max_batch_size is 0 and dims carry the batch as -1.
"""

from __future__ import annotations

import json

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from .. import io_spec
from ..config import ModelArgs
from . import protocol

DATA_TYPES = {
    "bool": pb.TYPE_BOOL, "int32": pb.TYPE_INT32, "int64": pb.TYPE_INT64, "float16": pb.TYPE_FP16,
    "float32": pb.TYPE_FP32, "bfloat16": pb.TYPE_BF16, "string": pb.TYPE_STRING,
}


def spec_dims(shape: tuple) -> list[int]:
    """io_spec shape → Triton dims: named (dynamic) dims become -1."""
    return [-1 if isinstance(d, str) else int(d) for d in shape]


def _tensors(message_type, specs: list[io_spec.TensorSpec]) -> list:
    return [message_type(name=t.name, data_type=DATA_TYPES[t.dtype], dims=spec_dims(t.shape)) for t in specs]


def _parameter(config: pb.ModelConfig, key: str, value) -> None:
    config.parameters[key].string_value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _model_io(config: pb.ModelConfig, args: ModelArgs, kv_dtype: str) -> None:
    spec = io_spec.io_spec(args, kv_dtype)
    config.input.extend(_tensors(pb.ModelInput, spec["inputs"]))
    config.output.extend(_tensors(pb.ModelOutput, spec["outputs"]))


def onnx_model_config(name: str, args: ModelArgs, kv_dtype: str, instances: int = 1) -> pb.ModelConfig:
    config = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=0,
                            default_model_filename="model.onnx")
    _model_io(config, args, kv_dtype)
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=instances)
    return config


def plan_model_config(name: str, args: ModelArgs, kv_dtype: str, engine: dict) -> pb.ModelConfig:
    """`engine` is the manifest's engine section (EngineBuild.to_manifest())."""
    config = pb.ModelConfig(name=name, platform="tensorrt_plan", max_batch_size=0,
                            default_model_filename="model.plan")
    _model_io(config, args, kv_dtype)
    # Listing every profile lets the backend pick prefill or decode from each request's shapes
    # (unlisted, an instance only ever uses profile 0).
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_GPU, count=1,
                              profile=[str(i) for i in range(len(engine["profiles"]))])
    _parameter(config, protocol.PARAM_TENSORRT_VERSION, tensorrt_requirement(engine))
    _parameter(config, "engine_profiles", list(engine["profiles"]))
    return config


def tensorrt_requirement(engine: dict) -> str:
    """What can deserialize the plan: the exact builder and version (plans are not portable across versions)."""
    return f"{engine['builder']} {engine['builder_version']}"


def frontend_config(name: str, args: ModelArgs, kv_dtype: str, max_input: int, max_seq: int, *,
                    onnx_model: str | None = None, plan_model: str | None = None,
                    instances: int = 1, ort_threads: int = 1, ort_spinning: bool = True, decoupled: bool = True,
                    scheduler: str = protocol.SCHEDULER_IN_FLIGHT, max_batch: int = 16,
                    max_tokens: int | None = None, max_prefill_tokens: int | None = None) -> pb.ModelConfig:
    """The Python model; exactly one of onnx_model (CPU, in-process ORT) or plan_model (GPU, BLS).

    decoupled=True streams (gRPC); decoupled=False is the unary sibling, because Triton's HTTP infer endpoint
    refuses decoupled models. scheduler (decoupled only): in-flight batching of up to max_batch sequences and
    max_tokens reserved KV tokens (default max_batch full contexts), the requests waiting at a step prefilled
    together up to max_prefill_tokens padded tokens per call (default max_input), or serial."""
    if scheduler not in (protocol.SCHEDULER_IN_FLIGHT, protocol.SCHEDULER_SERIAL):
        raise ValueError(f"unknown scheduler {scheduler!r}")
    if (onnx_model is None) == (plan_model is None):
        raise ValueError("give exactly one of onnx_model and plan_model")
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.model_transaction_policy.decoupled = decoupled  # decoupled: one response per token
    config.input.extend([
        pb.ModelInput(name=protocol.TEXT_INPUT, data_type=pb.TYPE_STRING, dims=[1]),
        pb.ModelInput(name=protocol.MAX_NEW_TOKENS, data_type=pb.TYPE_INT32, dims=[1], optional=True),
        pb.ModelInput(name=protocol.TEMPERATURE, data_type=pb.TYPE_FP32, dims=[1], optional=True),
        pb.ModelInput(name=protocol.TOP_P, data_type=pb.TYPE_FP32, dims=[1], optional=True),
        pb.ModelInput(name=protocol.SEED, data_type=pb.TYPE_INT64, dims=[1], optional=True),
        pb.ModelInput(name=protocol.STOP, data_type=pb.TYPE_STRING, dims=[-1], optional=True),
        pb.ModelInput(name=protocol.STREAM, data_type=pb.TYPE_BOOL, dims=[1], optional=True),
        pb.ModelInput(name=protocol.CHAT, data_type=pb.TYPE_BOOL, dims=[1], optional=True),
    ])
    config.output.extend([
        pb.ModelOutput(name=protocol.TEXT_OUTPUT, data_type=pb.TYPE_STRING, dims=[1]),
        pb.ModelOutput(name=protocol.TOKEN_IDS, data_type=pb.TYPE_INT64, dims=[-1]),
    ])
    kind = pb.ModelInstanceGroup.KIND_CPU if onnx_model else pb.ModelInstanceGroup.KIND_GPU
    config.instance_group.add(kind=kind, count=instances)
    _parameter(config, protocol.PARAM_MODEL_ARGS, args.to_dict())
    _parameter(config, protocol.PARAM_KV_DTYPE, kv_dtype)
    _parameter(config, protocol.PARAM_MAX_INPUT, str(max_input))
    _parameter(config, protocol.PARAM_MAX_SEQ, str(max_seq))
    _parameter(config, protocol.PARAM_SCHEDULER, scheduler if decoupled else protocol.SCHEDULER_SERIAL)
    _parameter(config, protocol.PARAM_MAX_BATCH, str(max_batch))
    _parameter(config, protocol.PARAM_MAX_TOKENS, str(max_tokens or max_batch * max_seq))
    _parameter(config, protocol.PARAM_MAX_PREFILL, str(max_prefill_tokens or max_input))
    if onnx_model:
        _parameter(config, protocol.PARAM_ONNX_MODEL, onnx_model)
        _parameter(config, protocol.PARAM_ORT_THREADS, str(ort_threads))
        _parameter(config, protocol.PARAM_ORT_SPINNING, "1" if ort_spinning else "0")
    else:
        _parameter(config, protocol.PARAM_PLAN_MODEL, plan_model)
    return config


def render(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


__all__ = ["DATA_TYPES", "frontend_config", "onnx_model_config", "plan_model_config", "render", "spec_dims",
           "tensorrt_requirement"]
