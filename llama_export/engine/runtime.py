"""Run a built engine through the Runner protocol with its KV cache kept on the GPU between steps.

Needs an NVIDIA GPU, a CUDA build of torch and the runtime the engine was built with (TensorRT or TensorRT-RTX).
Kept thin: lengths and profiles come from engine/profiles.py, I/O names from io_spec.py, the KV loop from
validate/runners.KVSession and validate/batching; everything that does not need a GPU is tested without one.

Polygraphy loads and activates the engine (`engine_from_path`, `TrtRunner`: execution context, CUDA stream,
`set_profile` per step). Binding and execution use the TensorRT API on TrtRunner's context, because
`TrtRunner.infer` cannot keep a cache on the device: on every call it gives each output its own IOutputAllocator
and returns views of buffers it reuses on the next call, so a `present.*` fed back as `past_key_values.*` would be
read and overwritten by the same step (docs/ENGINES.md, "The TensorRT runner"). Here every output is a fresh torch
CUDA tensor bound with `set_tensor_address`; `present.*` are returned as those tensors, KVSession hands them back
as the next step's past, and only the logits are copied to the host.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np

from .. import io_spec
from ..config import ModelArgs
from ..errors import UserError
from .builder import BUILDER_MODULES
from .profiles import PROFILES, ProfileLimits

ENGINE_KEYS = ("file", "sha256", "builder", "builder_version", "flags", "compute_capabilities", "limits", "profiles")


def runtime_mismatches(engine_manifest: dict, trt_version: str, gpu: str | None) -> list[str]:
    """Reasons an engine may not load or run as built: TensorRT plans are tied to the version (and, for full
    TensorRT, the GPU) they were built with."""
    problems = []
    built = engine_manifest.get("builder_version")
    if built and built != trt_version:
        problems.append(f"engine built with {engine_manifest.get('builder')} {built}, running {trt_version}")
    targets = " ".join(engine_manifest.get("compute_capabilities", []))
    if gpu and engine_manifest.get("builder") == "tensorrt" and targets and gpu.split()[0] not in targets:
        problems.append(f"engine built for {targets}, running on {gpu}")
    return problems


def engine_section(built, install_hint: str = "") -> dict:
    """The manifest's engine section of a loaded output folder (exporter.artifacts.Artifacts), complete; a
    one-line UserError when the folder has none or a damaged one."""
    engine = built.manifest.get("engine")
    if engine is None:
        hint = f" ({install_hint})" if install_hint else ""
        raise UserError(f"{built.folder} has no engine; build one with llama-export build --engine require{hint}")
    missing = [key for key in ENGINE_KEYS if key not in engine] if isinstance(engine, dict) else list(ENGINE_KEYS)
    if missing:
        raise UserError(f"{built.folder}/manifest.json has an incomplete engine section (no {', '.join(missing)}); "
                        f"rebuild {built.folder}")
    return engine


def require_gpu_runtime(engine: dict) -> None:
    """Refuse (one line) unless this process can run `engine`: its builder's runtime module is installed and a
    CUDA build of torch sees a GPU. Cheap, so callers run it before any other work."""
    builder = engine.get("builder")
    if builder not in BUILDER_MODULES:
        raise UserError(f"the engine names an unknown builder {builder!r}; rebuild it")
    needs = (f"--backend tensorrt needs an NVIDIA GPU, a CUDA build of torch and {builder} "
             f"{engine.get('builder_version', '')} (the engine's builder)")
    if importlib.util.find_spec(BUILDER_MODULES[builder]) is None:
        raise UserError(f"{needs}; {BUILDER_MODULES[builder]} is not installed (use --backend ort on this machine)")
    try:
        import torch
    except ImportError:
        raise UserError(f"{needs}; torch is not installed") from None
    if not torch.cuda.is_available():
        raise UserError(f"{needs}; torch {torch.__version__} sees no GPU (use --backend ort on this machine)")


class TensorRTRunner:
    """An engine as a Runner. Feeds: numpy arrays, or torch CUDA tensors for past_key_values.* (what this runner
    returned as present.*). Outputs: logits as numpy, present.* as torch CUDA tensors (never copied to the host).
    Call `close()` when done (it releases the execution context)."""

    name = "tensorrt"

    def __init__(self, plan: Path, args: ModelArgs, engine_manifest: dict):
        require_gpu_runtime(engine_manifest)
        import torch
        from polygraphy.datatype import DataType
        from polygraphy.exception import PolygraphyException

        from .polygraphy_backend import quiet_polygraphy, trt_backend

        builder = engine_manifest["builder"]
        if set(engine_manifest.get("profiles", {})) != set(PROFILES):  # indices: the order build_engine adds them
            raise UserError(f"{plan}: the engine's profiles are {sorted(engine_manifest.get('profiles', {}))}, not "
                            f"{list(PROFILES)}; rebuild it with llama-export build")
        self.limits = ProfileLimits.from_engine(engine_manifest, str(plan))
        pg = trt_backend(builder)
        trt = importlib.import_module(BUILDER_MODULES[builder])
        gpu = f"SM{''.join(map(str, torch.cuda.get_device_capability()))} {torch.cuda.get_device_name()}"
        for problem in runtime_mismatches(engine_manifest, trt.__version__, gpu):
            warnings.warn(f"{plan}: {problem}; rebuild the engine if it fails to load", stacklevel=2)
        with quiet_polygraphy():
            try:
                self._polygraphy = pg.TrtRunner(pg.engine_from_path(str(plan)))
                self._polygraphy.activate()
            except PolygraphyException as exc:
                raise UserError(f"{plan}: {builder} {trt.__version__} could not load the engine ({exc}); rebuild "
                                "it on this machine") from None
        self.torch, self.args = torch, args
        self.engine, self.context = self._polygraphy.engine, self._polygraphy.context
        if self.engine.num_optimization_profiles != len(PROFILES):
            self.close()
            raise UserError(f"{plan} holds {self.engine.num_optimization_profiles} optimization profiles, not "
                            f"{len(PROFILES)} ({', '.join(PROFILES)}); rebuild it with llama-export build")
        # torch allocates and copies on TrtRunner's stream, so its work and TensorRT's are ordered without events.
        self.stream = torch.cuda.ExternalStream(self._polygraphy.stream.ptr)
        names = [*io_spec.input_names(args.n_layers), *io_spec.output_names(args.n_layers)]
        self.dtypes = {name: DataType.to_dtype(DataType.from_dtype(self.engine.get_tensor_dtype(name), "tensorrt"),
                                               "torch") for name in names}
        kv = self.dtypes[io_spec.past_key(0)]
        self.kv_dtype = None if kv == torch.bfloat16 else np.dtype(str(kv).removeprefix("torch."))
        self.profile: int | None = None
        with torch.cuda.stream(self.stream):
            # TensorRT wants a non-null address for every input; an empty tensor (prefill's past) has none.
            self._placeholder = torch.empty(256, dtype=torch.uint8, device="cuda")

    def run(self, feeds: dict) -> dict:
        torch, n = self.torch, self.args.n_layers
        batch, seq = feeds[io_spec.INPUT_IDS].shape
        profile = self.limits.select_profile(batch, feeds[io_spec.past_key(0)].shape[2], seq)
        with torch.cuda.stream(self.stream):
            if profile != self.profile:
                self._polygraphy.set_profile(profile)  # enqueued on the same stream as the step
                self.profile = profile
            inputs = {name: self._on_device(name, feeds[name]) for name in io_spec.input_names(n)}
            for name, tensor in inputs.items():
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise UserError(f"the engine refused shape {tuple(tensor.shape)} for {name} (profile "
                                    f"{PROFILES[profile]})")
                self._bind(name, tensor)
            outputs = {}
            for name in io_spec.output_names(n):
                outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                            device="cuda")
                self._bind(name, outputs[name])
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see its log above)")
            logits = outputs.pop(io_spec.LOGITS).float().cpu()  # a blocking copy: the step has finished after it
        return {io_spec.LOGITS: logits.numpy(), **outputs}

    def close(self) -> None:
        """Release the execution context (Polygraphy's deactivate)."""
        if getattr(self, "_polygraphy", None) is not None and self._polygraphy.is_active:
            self._polygraphy.deactivate()

    def _on_device(self, name: str, value):
        """`value` as a contiguous CUDA tensor of the engine's dtype (no copy when it already is one)."""
        torch = self.torch
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return tensor.to(device="cuda", dtype=self.dtypes[name]).contiguous()

    def _bind(self, name: str, tensor) -> None:
        address = tensor.data_ptr() if tensor.numel() else self._placeholder.data_ptr()
        if not self.context.set_tensor_address(name, address):
            raise RuntimeError(f"TensorRT refused the address of {name}")


__all__ = ["ENGINE_KEYS", "TensorRTRunner", "engine_section", "require_gpu_runtime", "runtime_mismatches"]
