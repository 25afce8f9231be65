"""Which NGC Triton container can run an engine: a TensorRT plan only deserializes with the TensorRT version that
built it, and each `nvcr.io/nvidia/tritonserver:<release>-py3` image ships exactly one TensorRT.

Only rows read in NVIDIA's own Triton release notes (docs.nvidia.com/deeplearning/triton-inference-server/
release-notes/rel_YY-MM.html, "Contents of the Triton Inference Server container") are listed; anything else
points to the Frameworks Support Matrix rather than guessing.
"""

from __future__ import annotations

SUPPORT_MATRIX = "https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html"

# Triton container release -> the TensorRT version inside it (verified rows only, see the module docstring).
TRITON_RELEASE_TENSORRT = {
    "20.02": "7.0.0",
    "20.03.1": "7.0.0",
    "20.08": "7.1.3",
    "20.12": "7.2.2",
    "21.04": "7.2.3.4",
}


def _matches(shipped: str, built: str) -> bool:
    """Same version, compared on the components the release notes give (7.2.2 matches a 7.2.2.3 build)."""
    shipped_parts, built_parts = shipped.split("."), built.split(".")
    return built_parts[: len(shipped_parts)] == shipped_parts


def container_tags(builder: str, version: str) -> list[str]:
    """NGC image tags whose TensorRT matches an engine built by `builder` `version` ([] when none is verified)."""
    if builder != "tensorrt":
        return []  # TensorRT-RTX plans need the TensorRT-RTX runtime; Triton's tensorrt backend runs TensorRT
    return [f"nvcr.io/nvidia/tritonserver:{release}-py3"
            for release, shipped in TRITON_RELEASE_TENSORRT.items() if _matches(shipped, version)]


def container_advice(builder: str, version: str) -> str:
    """One sentence for the repository README."""
    tags = container_tags(builder, version)
    if tags:
        return f"Serve it with {' or '.join(tags)} (TensorRT {version})."
    if builder != "tensorrt":
        return (f"This engine was built by {builder} {version}: Triton's tensorrt_plan backend runs full TensorRT, "
                f"which cannot load a TensorRT-RTX plan. Rebuild with TensorRT for Triton; see the support matrix "
                f"({SUPPORT_MATRIX}) for the container that ships your TensorRT.")
    return (f"No verified container ships TensorRT {version} in our table; see the support matrix ({SUPPORT_MATRIX}) "
            f"for the tritonserver release whose TensorRT equals {version}.")


__all__ = ["SUPPORT_MATRIX", "TRITON_RELEASE_TENSORRT", "container_advice", "container_tags"]
