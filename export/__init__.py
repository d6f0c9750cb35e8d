"""Export MaskCLIP to ONNX / TensorRT and verify every artifact against PyTorch."""
