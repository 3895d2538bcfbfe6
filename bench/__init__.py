"""Benchmarks: side-by-side comparisons in one run, reported as ratios (absolute times are context)."""
