"""Evaluation: quality metrics, baselines, the eval protocol and speed benchmarks."""
