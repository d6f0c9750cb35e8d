"""Latency, throughput, memory and parity reports per device and backend."""
