"""One runner interface for every backend (Torch reference, ONNX Runtime, TensorRT), Polygraphy-style.

A runner maps the io_spec feeds (numpy arrays by name) to the io_spec outputs. `KVSession` drives any runner
through prefill and decode steps, threading `present.*` back into `past_key_values.*` — the loop is written once,
not per backend.

The KV cache is the runner's to keep where it runs: `present.*` may come back in the runner's own array type, and
the runner takes that type back as `past_key_values.*`. ORT and Torch return numpy arrays; the TensorRT runner
(engine/runtime.py) returns torch CUDA tensors, so the cache stays on the GPU between steps and only the logits
(always numpy) reach the host. KVSession passes the cache along without reading it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .. import io_spec
from ..config import ModelArgs
from ..errors import UserError

if TYPE_CHECKING:
    import torch


class Runner(Protocol):
    name: str
    args: ModelArgs
    kv_dtype: np.dtype  # dtype of past/present tensors

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """io_spec feeds -> io_spec outputs. Logits are numpy; present.* may be the runner's own cache type
        (see the module docstring), which it accepts back as past_key_values.*."""


class TorchRunner:
    """The reference model as a runner."""

    name = "torch"

    def __init__(self, model: torch.nn.Module):
        import torch  # here, not at module level: the Triton front end vendors this module without torch

        self.model = model
        self.args: ModelArgs = model.args
        self.dtype = next(model.parameters()).dtype
        self.kv_dtype = torch.empty((), dtype=self.dtype).numpy().dtype if self.dtype != torch.bfloat16 else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        n = self.args.n_layers
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in io_spec.input_names(n)]
        # numpy has no bfloat16: a bf16 model's cache travels as float32 (exact) and goes back to bf16 here
        tensors = [t.to(self.dtype) if t.is_floating_point() else t for t in tensors]
        with torch.no_grad():
            outputs = self.model(*tensors)
        return {name: t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
                for name, t in zip(io_spec.output_names(n), outputs)}


def left_padded_position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions count real tokens only, so a left-padded row sees the same positions as an unpadded one."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, positions).astype(np.int64)


class KVSession:
    """Prefill then decode one token at a time through any runner's explicit KV cache."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.args = runner.args
        self.attention_mask: np.ndarray | None = None
        self.past: dict = {}  # past_key_values.* as the runner returned them (numpy, or its device tensors)
        # Everything the runner returned on the last call, extras included (validation reads the per-layer
        # outputs a runner may expose from here, so the KV loop stays written once).
        self.last_outputs: dict[str, np.ndarray] = {}

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """input_ids [batch, seq] (left-padded if ragged) → logits [batch, seq, vocab]."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch = input_ids.shape[0]
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        shape = (batch, self.args.kv_heads, 0, self.args.head_dim)
        empty = np.zeros(shape, dtype=self.runner.kv_dtype or np.float32)
        self.past = {name: empty for name in io_spec.past_names(self.args.n_layers)}
        self.attention_mask = mask[:, :0]
        return self._forward(input_ids, mask, left_padded_position_ids(mask))

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids [batch] or [batch, 1] → logits [batch, 1, vocab]."""
        if self.attention_mask is None:
            raise RuntimeError("step() before prefill()")
        token_ids = np.asarray(token_ids, dtype=np.int64).reshape(-1, 1)
        new_mask = np.ones_like(token_ids)
        positions = self.attention_mask.sum(axis=-1, keepdims=True).astype(np.int64)
        return self._forward(token_ids, new_mask, positions)

    @property
    def length(self) -> int:
        return 0 if self.attention_mask is None else self.attention_mask.shape[1]

    def _forward(self, input_ids, new_mask, position_ids) -> np.ndarray:
        mask = np.concatenate([self.attention_mask, new_mask], axis=1)
        feeds = {
            io_spec.INPUT_IDS: input_ids,
            io_spec.POSITION_IDS: position_ids,
            io_spec.ATTENTION_MASK: mask,
            **self.past,
        }
        outputs = self.runner.run(feeds)
        self.last_outputs = outputs
        n = self.args.n_layers
        self.past = {p: outputs[q] for p, q in zip(io_spec.past_names(n), io_spec.present_names(n))}
        self.attention_mask = mask
        return outputs[io_spec.LOGITS]


def cpu_session(model, options, shown: str):
    """An ORT CPUExecutionProvider session for `model` (a path or serialized bytes). A graph ORT has no CPU kernel
    for (a bf16 graph's Mul/MatMul/...) is a UserError naming the op and node, not ORT's traceback: the user
    picked a precision this backend does not run, and another precision does."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except OrtNotImplemented as exc:
        raise UserError(f"ONNX Runtime {ort.__version__} (CPU) cannot run {shown}: {_missing_kernel(str(exc))}; "
                        "export another precision (fp32, fp16) to run it on CPU") from None


def _missing_kernel(message: str) -> str:
    """ORT's "Could not find an implementation for Mul(14) node with name 'x'" as "no kernel for Mul(14) (node
    'x')"; any other NOT_IMPLEMENTED message as its first line, without ORT's status prefix."""
    found = re.search(r"Could not find an implementation for (\S+) node with name '([^']*)'", message)
    if found:
        return f"no kernel for {found[1]} (node '{found[2]}') with this graph's types"
    return message.strip().splitlines()[0].split("NOT_IMPLEMENTED : ")[-1]


# ORT session config: MatMulNBits made from int8- or int4-weight DQ → MatMul computes in fp32 (the graph's semantics).
WEIGHT_ONLY_INT8 = {"session.qdq_matmulnbits_accuracy_level": "0"}

# ONNX type strings as ORT reports them -> numpy dtypes. bfloat16 has no numpy dtype of its own; ml_dtypes
# (an onnx dependency) provides one that ORT accepts.
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def ort_numpy_dtype(ort_type: str) -> np.dtype:
    """The numpy dtype of an ORT type string such as 'tensor(float16)'."""
    if ort_type == "tensor(bfloat16)":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_ORT_DTYPES[ort_type])


class OrtRunner:
    """An exported model in ONNX Runtime (CPU). `graph_optimization_level` lets tests turn ORT's fusions off.

    `model_path` may also be the serialized model (bytes), e.g. a graph edited in memory; its external data is
    then read from `external_data_dir` (ORT refuses external data outside the model's own folder, so an edited
    copy cannot simply be written elsewhere). `session_config` entries go to ORT as is, e.g.
    WEIGHT_ONLY_INT8: ORT turns int8-weight DequantizeLinear → MatMul into MatMulNBits and, by default
    (accuracy level 4), quantizes the activations to int8 inside it — fast, but no longer the graph's
    weight-only arithmetic; level 0 computes exactly what the graph says (and is far slower on CPU: ORT has no
    fast kernel for it; docs/BENCHMARKS.md, INT8).
    """

    name = "ort"

    def __init__(self, model_path, args: ModelArgs, graph_optimization_level=None, intra_op_threads: int = 0,
                 external_data_dir=None, session_config: dict[str, str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        if graph_optimization_level is not None:
            options.graph_optimization_level = graph_optimization_level
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3  # ORT warns about every fp16 cast it inserts; errors still raise
        if external_data_dir is not None:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(external_data_dir))
        model = model_path if isinstance(model_path, bytes) else str(model_path)
        self.session = cpu_session(model, options, "the edited model" if isinstance(model, bytes) else model)
        self.args = args
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_dtype = ort_numpy_dtype(types[io_spec.past_key(0)])
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: self._cast(name, feeds[name]) for name in self._inputs}
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))

    def _cast(self, name: str, array: np.ndarray) -> np.ndarray:
        if name.startswith("past_key_values.") and array.dtype != self.kv_dtype:
            return array.astype(self.kv_dtype)
        return np.ascontiguousarray(array)
