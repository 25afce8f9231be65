"""llama_export.RotaryEmbedding: reference, ONNX function, Triton kernel, TensorRT plugin."""
