"""ONNX graphs built from canonical numpy weights, without torch."""
