"""Polygraphy's TensorRT backend, bound to TensorRT or TensorRT-RTX.

Polygraphy drives both with the same loaders and runner: `polygraphy.backend.trt` imports `tensorrt`, or
`tensorrt_rtx` when `polygraphy.config.USE_TENSORRT_RTX` is set (what POLYGRAPHY_USE_TENSORRT_RTX=1 sets). It
reads that flag once, when polygraphy.backend.trt is first imported, so a process uses one of the two: `trt_backend`
sets the flag for the chosen builder before that import, and refuses to switch afterwards.
"""

from __future__ import annotations

import sys
from types import ModuleType

from ..errors import UserError

RTX = "tensorrt-rtx"


def trt_backend(builder: str) -> ModuleType:
    """polygraphy.backend.trt, bound to `builder` ("tensorrt" or "tensorrt-rtx")."""
    import polygraphy.config

    want_rtx = builder == RTX
    if "polygraphy.backend.trt" not in sys.modules:
        polygraphy.config.USE_TENSORRT_RTX = want_rtx
    elif polygraphy.config.USE_TENSORRT_RTX != want_rtx:
        bound = RTX if polygraphy.config.USE_TENSORRT_RTX else "tensorrt"
        raise UserError(f"this process already drives {bound} through Polygraphy, which binds one TensorRT per "
                        f"process; use --builder {bound}, or run the {builder} build in its own process")
    import polygraphy.backend.trt

    return polygraphy.backend.trt


def quiet_polygraphy(verbose: bool = False):
    """Polygraphy logs every loader step on stdout; keep stdout for our own output unless asked."""
    from polygraphy.logger import G_LOGGER

    return G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.ERROR)


__all__ = ["quiet_polygraphy", "trt_backend"]
