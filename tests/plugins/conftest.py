"""Plugin tests: Triton kernels run on CPU in interpreter mode.

TRITON_INTERPRET is read when a @triton.jit function is defined, so it is set here, before any test module
imports a kernel. Ahead-of-time (PTX) compilation needs it unset and runs in a subprocess.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

