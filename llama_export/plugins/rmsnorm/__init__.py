"""llama_export.RMSNorm: reference, ONNX function, Triton kernel, TensorRT plugin."""
