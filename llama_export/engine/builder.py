"""Build a strongly typed engine with TensorRT or TensorRT-RTX, through Polygraphy's loaders.

Both expose the same Python builder API (module `tensorrt` or `tensorrt_rtx`), and Polygraphy drives either
(polygraphy_backend.py); everything here runs on both. Precision comes from the ONNX types and Q/DQ nodes: no FP16/INT8 builder flags (TensorRT 11 removed
them; TensorRT-RTX never had them).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ..config import ModelArgs
from ..errors import UserError
from .profiles import ProfileLimits, input_shapes

BUILDER_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
INSTALL_HINT = ("install one: pip install 'llama-export[tensorrt-rtx]' (TensorRT for RTX, builds on CPU) or "
                "'llama-export[tensorrt]' (needs NVIDIA's package index)")


class EngineError(UserError):
    """The builder refused the model; the message names the node or profile at fault."""


@dataclass(frozen=True)
class Builder:
    """An installed builder: its name (a BUILDER_MODULES key) and its Python module."""

    name: str
    module: ModuleType


def find_builder(choice: str = "auto") -> Builder | None:
    """The requested builder, or None for auto with nothing installed."""
    names = list(BUILDER_MODULES) if choice == "auto" else [choice]
    for name in names:
        if name not in BUILDER_MODULES:
            raise UserError(f"unknown builder {name!r}; choose auto, {', '.join(BUILDER_MODULES)}")
        try:
            return Builder(name, importlib.import_module(BUILDER_MODULES[name]))
        except ImportError:
            continue
    if choice != "auto":
        raise UserError(f"builder {choice} is not installed; {INSTALL_HINT}")
    return None


@dataclass
class EngineBuild:
    plan: Path
    builder: str
    builder_version: str
    limits: dict
    profiles: dict  # {profile: {input: [min, opt, max]}}
    flags: list[str]
    compute_capabilities: list[str]
    seconds: float
    sha256: str = ""
    timing_cache: str | None = None
    plugins: list[str] = field(default_factory=list)
    graph_changes: list[str] = field(default_factory=list)  # what tensorrt_view changed for the parser

    def to_manifest(self) -> dict:
        return {
            "file": self.plan.name,
            "builder": self.builder,
            "builder_version": self.builder_version,
            "limits": self.limits,
            "profiles": self.profiles,
            "flags": self.flags,
            "compute_capabilities": self.compute_capabilities,
            "sha256": self.sha256,
            "plugins": self.plugins,
            "graph_changes": self.graph_changes,
        }


def tensorrt_view(onnx_path: Path) -> tuple[bytes | None, list[str]]:
    """The graph as TensorRT's parser can take it: (serialized model or None for the file as is, what changed).

    Only one thing differs: TensorRT's ONNX parser refuses Attention's `softmax_precision` attribute ("Setting
    softmax precision is not supported in TensorRT Attention", TensorRT-RTX 1.7.1), which the fp16/bf16 `onnx`
    target sets so ORT keeps softmax in fp32. IAttention has no precision setting; its softmax precision is
    the kernel's. The weights stay where they are (external data, read through the parser's `path`)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    changed = 0
    for node in model.graph.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            kept = [a for a in node.attribute if a.name != "softmax_precision"]
            if len(kept) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)
                changed += 1
    if not changed:
        return None, []
    return model.SerializeToString(), [f"softmax_precision dropped from {changed} Attention nodes"]


def _parse(pg, trt, onnx_path: Path):
    """Polygraphy's network_from_onnx_path on the graph as TensorRT takes it (tensorrt_view): (builder, network,
    parser), what tensorrt_view changed. A changed graph is parsed from a sibling file, so its external data
    resolves as the original's does."""
    from polygraphy.exception import PolygraphyException

    serialized, notes = tensorrt_view(onnx_path)
    view = onnx_path if serialized is None else onnx_path.with_name(f".{onnx_path.stem}.tensorrt-{os.getpid()}.onnx")
    try:
        if serialized is not None:
            view.write_bytes(serialized)
        try:
            return pg.network_from_onnx_path(str(view), strongly_typed=True), notes
        except PolygraphyException:
            # Polygraphy logs each parser error and raises "Could not parse ONNX correctly"; name the node here.
            raise EngineError(_first_parser_error(trt, view, onnx_path.name)) from None
    finally:
        if view != onnx_path:
            view.unlink(missing_ok=True)


def _first_parser_error(trt, path: Path, shown_name: str) -> str:
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(path)) or parser.num_errors == 0:
        return f"{shown_name}: the ONNX parser rejected the model"
    first = parser.get_error(0)
    more = f" (+{parser.num_errors - 1} more errors)" if parser.num_errors > 1 else ""
    return (f"{shown_name}: the ONNX parser rejected node {first.node_name() or '#' + str(first.node())} "
            f"(op {first.node_operator() or '?'}): {first.desc()}{more}")


def allow_attention_decomposition(trt, network) -> int:
    """Mark every IAttention the parser made (from ONNX Attention) decomposable; returns how many.

    Without it a builder that has no dedicated kernel for the shape/dtype fails the whole build (TensorRT-RTX
    1.7.1, head_dim 64 fp32: "Attention operation was not supported by a dedicated kernel ... may be marked as
    decomposable, using the TensorRT IAttention::setDecomposable method"). A dedicated kernel is still used
    where one exists. Parsed layers come back as plain ILayer: re-class them to reach `.attention`
    (Polygraphy's idiom)."""
    input_type = getattr(trt.LayerType, "ATTENTION_INPUT", None)
    if input_type is None:  # a TensorRT without IAttention parses ONNX Attention some other way
        return 0
    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == input_type:
            layer.__class__ = trt.IAttentionInputLayer
            layer.attention.decomposable = True
            count += 1
    return count


def compute_capabilities(trt, config) -> list[str]:
    """What the plan targets: TensorRT-RTX builds portable plans (default set) unless told otherwise;
    full TensorRT targets the GPU it builds on."""
    if hasattr(config, "num_compute_capabilities"):
        chosen = [str(config.get_compute_capability(i)) for i in range(config.num_compute_capabilities)]
        return chosen or ["portable: TensorRT-RTX default set (SM80, SM86, SM89, SM120)"]
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return [f"SM{major}{minor} ({torch.cuda.get_device_name()})"]
    except ImportError:
        pass
    return ["the build GPU"]


def build_engine(onnx_path: Path, args: ModelArgs, plan_path: Path, limits: ProfileLimits | None = None,
                 builder: str = "auto", timing_cache: Path | None = None, verbose: bool = False,
                 profiles: tuple[str, ...] | None = None,
                 configure: Callable[[object, object], list[str]] | None = None) -> EngineBuild:
    """Build `plan_path` from `onnx_path` through Polygraphy's loaders: network_from_onnx_path, CreateConfig with
    the prefill and decode Profiles (and the timing cache), engine_bytes_from_network.
    `profiles`: build only these optimization profiles (default: all of profiles.input_shapes).
    `configure(trt, config)`: last changes to the builder config (benchmarks/engine_memory.py tries the memory
    options with it); returns the names of the flags it set, recorded in the manifest."""
    from polygraphy.exception import PolygraphyException

    from .polygraphy_backend import quiet_polygraphy, trt_backend

    limits = limits or ProfileLimits()
    found = find_builder(builder)
    if found is None:
        raise UserError(f"no TensorRT builder is installed; {INSTALL_HINT}")
    name, trt = found.name, found.module
    pg = trt_backend(name)
    shapes = {p: s for p, s in input_shapes(args, limits).items() if profiles is None or p in profiles}
    start = time.perf_counter()
    with quiet_polygraphy(verbose), warnings.catch_warnings():
        # Polygraphy's CreateConfigRTX sets a timing cache, which TensorRT-RTX deprecates as a no-op (1.2+).
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*[Tt]iming cache.*")
        (trt_builder, network, parser), notes = _parse(pg, trt, Path(onnx_path))
        decomposable = allow_attention_decomposition(trt, network)

        network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
        pg_profiles, accepted = [], {}  # accepted: what TensorRT holds for each profile, read back from its objects
        for profile_name, per_input in shapes.items():
            missing = set(per_input) - network_inputs
            if missing:
                raise EngineError(f"{Path(onnx_path).name} lacks inputs {sorted(missing)} that io_spec names; "
                                  "re-export it")
            profile = pg.Profile()
            for input_name, (lo, opt, hi) in per_input.items():
                profile.add(input_name, lo, opt, hi)
            pg_profiles.append(profile)
            held = profile.to_trt(trt_builder, network)
            accepted[profile_name] = {n: [list(map(int, s)) for s in held.get_shape(n)] for n in per_input}

        # TensorRT-RTX picks kernels at run time: its timing-cache calls are deprecated no-ops (1.2+), so a cache
        # file is only read and written for full TensorRT.
        use_cache = timing_cache is not None and name == "tensorrt"
        # LAYER_NAMES_ONLY is TensorRT's own default; Polygraphy would otherwise embed DETAILED layer info.
        common = {"profiles": pg_profiles, "profiling_verbosity": trt.ProfilingVerbosity.LAYER_NAMES_ONLY}
        if name == "tensorrt-rtx":
            from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

            create_config = CreateConfigRTX(**common)
        else:
            create_config = pg.CreateConfig(**common, load_timing_cache=str(timing_cache) if use_cache else None)
        config = create_config(trt_builder, network)
        if config.num_optimization_profiles != len(pg_profiles):
            raise EngineError(f"TensorRT accepted {config.num_optimization_profiles} of the {len(pg_profiles)} "
                              f"optimization profiles {list(shapes)}")
        extra_flags = configure(trt, config) if configure is not None else []
        try:
            data = bytes(pg.engine_bytes_from_network((trt_builder, network, parser), config,
                                                      save_timing_cache=str(timing_cache) if use_cache else None))
        except PolygraphyException:
            raise EngineError(f"{name} could not build {Path(onnx_path).name} (rerun with --verbose for the "
                              "builder log)") from None
    Path(plan_path).write_bytes(data)
    return EngineBuild(
        plan=Path(plan_path),
        builder=name,
        builder_version=trt.__version__,
        limits=limits.to_dict(),
        profiles=accepted,
        flags=["STRONGLY_TYPED", *(["ATTENTION_DECOMPOSABLE"] if decomposable else []), *extra_flags],
        compute_capabilities=compute_capabilities(trt, config),
        seconds=time.perf_counter() - start,
        sha256=hashlib.sha256(data).hexdigest(),
        timing_cache=str(timing_cache) if use_cache else None,
        graph_changes=notes,
    )
