"""Benchmarks: each measures edgelake against a baseline in the same run."""
