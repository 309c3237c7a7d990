"""Custom counters on Triton's /metrics for the Python-backend models (front and core)."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils


def counter_families(docs: dict[str, str]) -> dict:
    """One COUNTER family per name. Keep the returned dict on the model instance: a family must
    outlive the metrics made from it."""
    return {name: pb_utils.MetricFamily(name, doc, pb_utils.MetricFamily.COUNTER) for name, doc in docs.items()}
