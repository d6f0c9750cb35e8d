"""MaskCLIP reference model (PyTorch): config registry, model, weights, losses, data, training, evaluation."""

__version__ = "0.1.0"
