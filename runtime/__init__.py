"""Torch-free MaskCLIP runtime: load an exported artifact and detect generated images and pixels."""

__version__ = "0.1.0"
