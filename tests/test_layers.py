"""Data flows one way (DESIGN.md): exporter → graphs → (engine, validate, triton). graphs/ is a bottom layer."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llama_export"


def test_importing_graphs_loads_no_exporter_module():
    code = ("import importlib, json, pkgutil, sys, llama_export.graphs as g\n"
            "for m in pkgutil.walk_packages(g.__path__, 'llama_export.graphs.'): importlib.import_module(m.name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('llama_export.'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                       cwd=PACKAGE.parent).stdout)
    assert "llama_export.graphs.quantize" in loaded  # the walk imported every graphs module
    assert [m for m in loaded if m.startswith("llama_export.exporter")] == []


def test_no_module_level_getattr_reexports():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                        for n in ast.parse(p.read_text()).body)]
    assert offenders == []


def test_no_private_onnxscript_api():
    """onnxscript's underscore modules and names change without notice; the package uses its public API only."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                   for a in n.names if a.name.startswith("onnxscript")}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnxscript"):
                parts = node.module.split(".") + [a.name for a in node.names]
                offenders += [f"{path.name}: from {node.module} import ..." for p in parts if p.startswith("_")][:1]
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.startswith("onnxscript") and "._" in a.name]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and isinstance(node.value, ast.Name) and node.value.id in aliases | {"rewriter", "optimizer"}):
                offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert offenders == []
