"""Triton serving: stage specs, Python-backend models, config generation and the CPU launcher."""
