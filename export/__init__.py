"""Export HNDSR stages to ONNX and write the Triton model repository."""
