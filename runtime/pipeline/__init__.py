"""The one pipeline every front end runs (maskclip-run, maskclip-serve, the Ray scan).

decode -> prepare -> detect -> record -> sinks (steps.py)."""
