"""llama-export: LLaMA-family models from a Torch reference to ONNX, TensorRT and Triton."""

__version__ = "0.1.0"
