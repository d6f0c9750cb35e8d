"""Torch-free MaskCLIP runtime: load an exported artifact and detect generated images and pixels.

from maskclip_runtime import Detector
detection = Detector().detect("photo.jpg")  # the embedded demo model; Detector("artifact/") for yours
detections = Detector("artifact/").detect([pil_image, rgb_uint8_array, "other.png"])  # a list in, a list out
"""

__version__ = "0.1.0"

__all__ = ["Detection", "Detector", "load_artifact", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import maskclip_runtime.kernel.preprocess` (done by training code) stays as light as it is.
    if name in ("Detection", "Detector"):
        from .detect import detector

        return getattr(detector, name)
    if name == "load_artifact":
        from .contract.artifact import load_artifact

        return load_artifact
    raise AttributeError(f"module 'maskclip_runtime' has no attribute {name!r}")
