"""Test harnesses shared by tests and benchmarks (not part of the app): in-process grid, faults."""
