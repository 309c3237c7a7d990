"""Read Triton's own Prometheus metrics and summarise them for the UI's live panel."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

SERVING_MODELS = ("hndsr", "hndsr_stream")
STAGE_MODELS = ("encoder", "prior", "unet", "decoder")


def fetch(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def parse(text: str) -> dict[str, dict[str, float]]:
    """Counter/gauge family name -> model (or stage/outcome label) -> value, summed over other labels."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "gauge"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            model = sample.labels.get("model") or sample.labels.get("stage") or sample.labels.get("outcome") or ""
            out[family.name][model] += sample.value
    return out


def summary(text: str) -> dict[str, float]:
    """Requests, failures, average request/queue latency of the serving models and average
    compute per request of each stage model (milliseconds), from Triton's counters."""
    m = parse(text)

    def total(name: str, models) -> float:
        return sum(m.get(name, {}).get(model, 0.0) for model in models)

    success = total("nv_inference_request_success", SERVING_MODELS)
    failure = total("nv_inference_request_failure", SERVING_MODELS)
    done = max(success + failure, 1.0)
    result = {
        "requests": success + failure,
        "successes": success,
        "failures": failure,
        "avg_request_ms": total("nv_inference_request_duration_us", SERVING_MODELS) / done / 1000,
        "avg_queue_ms": total("nv_inference_queue_duration_us", SERVING_MODELS) / done / 1000,
    }
    for stage in STAGE_MODELS:
        result[f"{stage}_compute_ms_per_request"] = (
            total("nv_inference_compute_infer_duration_us", (stage,)) / max(success, 1.0) / 1000
        )
    return result


def markdown(stats: dict[str, float]) -> str:
    rows = [
        (
            "requests (success / failed)",
            f"{stats['requests']:.0f} ({stats['successes']:.0f} / {stats['failures']:.0f})",
        ),
        ("avg request latency", f"{stats['avg_request_ms']:.0f} ms"),
        ("avg queue time", f"{stats['avg_queue_ms']:.1f} ms"),
    ]
    rows += [
        (f"{stage} compute / request", f"{stats[f'{stage}_compute_ms_per_request']:.0f} ms") for stage in STAGE_MODELS
    ]
    return "| Triton metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
