"""MaskCLIP modules, one per concept."""
