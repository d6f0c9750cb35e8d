"""maskclip-serve: the runtime's Detector behind an HTTP API with micro-batching, a web page and metrics.

Needs the `serve` extra (FastAPI, uvicorn, python-multipart, prometheus-client); like the rest of
the runtime it never imports torch. `--triton` serves the same Detector through NVIDIA Triton.
"""
