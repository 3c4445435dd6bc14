"""Benchmarks: each prints a short table and, as its last line, one JSON object with its figures
and the device, and writes the same JSON under bench/results/."""
