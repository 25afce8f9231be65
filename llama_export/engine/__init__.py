"""Stage 4: TensorRT / TensorRT-RTX engines from an exported ONNX model."""
