"""Stage 1: the Torch reference model, checkpoint loading, and tracing to ONNX."""
