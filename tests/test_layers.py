"""Data flows one way (DESIGN.md): exporter → graphs → (engine, validate, triton). graphs/ is a bottom layer.
Of our dependencies, the package uses public APIs only; OpenAI Triton's undocumented compiler entry points are
used in one adapter module (plugins/triton_aot.py), pinned by tests/plugins/test_triton_aot.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llama_export"
# What graphs/ may import from the package: itself and the layers below it (plugins/spec.py is shared with graphs/
# by design). Anything else (exporter/, engine/, validate/, triton/, build, cli) runs after the graph passes.
GRAPHS_MAY_IMPORT = ("llama_export.graphs", "llama_export.assets", "llama_export.plugins", "llama_export.config",
                     "llama_export.errors", "llama_export.io_spec", "llama_export.memory", "llama_export.model",
                     "llama_export.pending_weights")
# Dependencies whose underscore modules and names change without notice.
PRIVATE_API_ROOTS = ("onnx", "onnx_ir", "onnxruntime", "onnxscript", "polygraphy", "tensorrt", "tensorrt_rtx",
                     "triton")
TRITON_ADAPTER = "plugins/triton_aot.py"
# OpenAI Triton's documented surface (triton-lang.org: triton, triton.language, triton.testing) that kernels use.
TRITON_PUBLIC = {"jit", "autotune", "heuristics", "Config", "cdiv", "next_power_of_2", "language", "testing"}


def _modules():
    """(path, dotted module name, source) of every package module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path.read_text()


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import anywhere in `tree` (module level, in functions, under
    TYPE_CHECKING alike); `from X import name` counts as X.name, as it may name a submodule."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def layer_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports of package modules that `module` (a graphs/ module) may not import."""
    return [f"{module}:{line} imports {name}" for line, name in imported_modules(ast.parse(source), module, is_package)
            if name.startswith("llama_export.") and not name.startswith(GRAPHS_MAY_IMPORT)]


def private_api_uses(source: str, roots=PRIVATE_API_ROOTS) -> list[str]:
    """Underscore modules or names of `roots` that `source` imports, or reaches as attributes of a name it bound
    by importing from them (`from onnxscript import rewriter; rewriter._x`, `import onnx; onnx.helper._y`)."""
    tree = ast.parse(source)
    bound, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in roots:
                    bound.add(a.asname or a.name.split(".")[0])
                    found += [f"import {a.name}"] if any(p.startswith("_") for p in a.name.split(".")) else []
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in roots:
            bound |= {a.asname or a.name for a in node.names}
            if any(p.startswith("_") for p in node.module.split(".") + [a.name for a in node.names]):
                found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(ast.unparse(node))
    return found


def undocumented_triton_uses(source: str) -> list[str]:
    """What `source` reaches of OpenAI Triton beyond TRITON_PUBLIC (triton.compiler, triton.runtime, ...)."""
    tree = ast.parse(source)
    found, triton_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "triton" or a.name.startswith("triton."):
                    if a.name.split(".")[1:2] not in ([], ["language"]):
                        found.append(f"import {a.name}")
                    if a.asname is None or a.name == "triton":
                        triton_names.add(a.asname or "triton")
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "triton":
            if node.module not in ("triton", "triton.language"):
                found.append(f"from {node.module} import ...")
            elif node.module == "triton":
                found += [f"from triton import {a.name}" for a in node.names if a.name not in TRITON_PUBLIC]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in triton_names
                and node.attr not in TRITON_PUBLIC):
            found.append(ast.unparse(node))
    return found


def test_importing_graphs_loads_no_exporter_module():
    code = ("import importlib, json, pkgutil, sys, llama_export.graphs as g\n"
            "for m in pkgutil.walk_packages(g.__path__, 'llama_export.graphs.'): importlib.import_module(m.name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('llama_export.'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                       cwd=PACKAGE.parent).stdout)
    assert "llama_export.graphs.quantize" in loaded  # the walk imported every graphs module
    assert [m for m in loaded if m.startswith("llama_export.exporter")] == []


def test_graphs_import_only_lower_layers_even_inside_functions():
    """sys.modules sees module-level imports only; this reads every import statement, deferred ones included."""
    offenders = []
    for path, module, source in _modules():
        if module.startswith("llama_export.graphs"):
            offenders += layer_violations(source, module, path.name == "__init__.py")
    assert offenders == []


@pytest.mark.parametrize("source", ["def f():\n    from ..exporter.model import Transformer\n",
                                    "def f():\n    from .. import exporter\n",
                                    "if TYPE_CHECKING:\n    from ..validate.runners import Runner\n",
                                    "def f():\n    import llama_export.exporter.checkpoints\n"])
def test_the_layer_check_sees_deferred_imports(source):
    assert layer_violations(source, "llama_export.graphs.awq") != []
    assert layer_violations("from ..model import Transformer\nfrom . import int4\n", "llama_export.graphs.awq") == []


def test_no_module_level_getattr_reexports():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                        for n in ast.parse(p.read_text()).body)]
    assert offenders == []


def test_no_private_api_of_dependencies():
    """onnx, onnx-ir, onnxruntime, onnxscript, Polygraphy, TensorRT, OpenAI Triton: public modules and names only."""
    offenders = [f"{path.relative_to(PACKAGE)}: {use}" for path, _, source in _modules()
                 for use in private_api_uses(source)]
    assert offenders == []


@pytest.mark.parametrize("source", ["from onnxscript.rewriter import _ir_utils\n",
                                    "from onnxscript import rewriter\nrewriter._DEFAULT_REWRITE_RULES\n",
                                    "import onnxscript.optimizer._constant_folding\n",
                                    "import onnx\nonnx.helper._attr_type\n",
                                    "from polygraphy.backend import trt\ntrt._util\n"])
def test_the_private_api_check_sees_them(source):
    assert private_api_uses(source) != []
    assert private_api_uses("import onnx\nonnx.helper.make_node\nx._private\n") == []


def test_triton_internals_only_in_the_adapter():
    offenders = [f"{path.relative_to(PACKAGE)}: {use}" for path, _, source in _modules()
                 if path.relative_to(PACKAGE).as_posix() != TRITON_ADAPTER
                 for use in undocumented_triton_uses(source)]
    assert offenders == []
    adapter = (PACKAGE / TRITON_ADAPTER).read_text()
    assert undocumented_triton_uses(adapter) != []  # the adapter is where they went, not gone unnoticed


@pytest.mark.parametrize("source", ["import triton\ntriton.compiler.ASTSource\n", "import triton\ntriton.compile\n",
                                    "from triton.backends.compiler import GPUTarget\n",
                                    "import triton.runtime\n", "from triton import compile\n"])
def test_the_triton_check_sees_internals(source):
    assert undocumented_triton_uses(source) != []
    assert undocumented_triton_uses("import triton\nimport triton.language as tl\n@triton.jit\ndef k(): "
                                    "tl.arange(0, triton.next_power_of_2(3))\n") == []
