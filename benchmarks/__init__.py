"""Timed runs of gpuhub's pieces (make bench). Run from the repository root: python -m benchmarks.<name>."""
