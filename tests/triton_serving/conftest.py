"""Fixtures for the Triton tests: the tiny model's export folder, shared by every test in the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_export import export_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("triton-tiny") / "tiny")
