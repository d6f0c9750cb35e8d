"""Detection: the Detector over one artifact and backend, its self-check, and tiling."""
