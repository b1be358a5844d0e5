"""ONNX export of a (pruned) nn.Module and its parity check against PyTorch."""
