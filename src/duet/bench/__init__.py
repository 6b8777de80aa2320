"""Measurements behind docs/benchmarks.md: duet beside the peers, same files, same run."""
