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
