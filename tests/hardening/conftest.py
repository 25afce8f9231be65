"""Fixtures for the hardening tests: one tiny export, copied per test before it is damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """One export of the built-in tiny model (fp32) that tests copy before they tamper with it."""
    from llama_export.exporter.export import export_to_folder
    from llama_export.exporter.sources import resolve_checkpoint

    out = tmp_path_factory.mktemp("hardening") / "tiny-fp32"
    return export_to_folder(resolve_checkpoint(), out, quiet=True)


@pytest.fixture
def export_copy(tiny_export, tmp_path) -> Path:
    """A private copy of the tiny export, free to damage."""
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    return copy
