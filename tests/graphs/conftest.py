"""Fixtures for the graph-rewrite tests (helpers shared as plain functions live in graph_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def prompt() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 100, size=(1, 7))
