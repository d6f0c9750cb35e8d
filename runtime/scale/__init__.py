"""Front ends that spread one scan over many machines (Ray)."""
