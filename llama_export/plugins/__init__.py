"""Custom nodes for the `plugin` fusion target: contract in spec.py, one folder per op.

Each folder holds the numpy reference (the correctness anchor), the ONNX model-local function (so any
runtime can run the node), the Triton kernel and its TensorRT AOT plugin registration (GPU only).
"""
