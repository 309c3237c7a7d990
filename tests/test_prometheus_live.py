"""A real Prometheus (Debian's server) scrapes a live ``hndsr serve`` with the project's alert rules.

The rules are export/prometheus/alerts.yml with every ``for:`` set to 0 s (the production ones wait
minutes) and the scrape and evaluation intervals at 0.5 s; the expressions are unchanged. Checked:
every dashboard and HPA-adapter query returns data from the live server; killing a stage stub
fires HNDSRStageRestarted, which resolves once the stage is healed and the window has passed; a burst beyond the
bounded queue fires HNDSROverloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from .conftest import FIXTURES, Launched, free_port, wait_until
from .test_deploy_manifests import PROMETHEUS, monitoring_queries

pytestmark = pytest.mark.integration

SUMMARIES = ["--triton-arg=--metrics-config=summary_latencies=true"]
GPU_ONLY = "nv_gpu_"
"""Series a CPU server does not export (the GPU panels and alerts)."""


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("Debian's prometheus server is not installed (.ci/setup installs it)")
    return path


class Prometheus:
    """Prometheus on loopback with the project's rules (``for: 0s``), scraping ``target``."""

    def __init__(self, work: Path, target: str) -> None:
        self.port = free_port()
        rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
        for group in rules["groups"]:
            group["interval"] = "500ms"
            for rule in group["rules"]:
                rule["for"] = "0s"
                if rule["alert"] == "HNDSRStageRestarted":  # resolves 12 s after the restart, not 10 min
                    rule["expr"] = rule["expr"].replace("[10m]", "[12s]")
        (work / "alerts.yml").write_text(yaml.safe_dump(rules))
        scrape = {
            "job_name": "hndsr-triton",  # the job the rules and the dashboard select on
            "scrape_interval": "500ms",
            "scrape_timeout": "400ms",
            # The Kubernetes labels the HPA adapter's queries match on.
            "static_configs": [{"targets": [target], "labels": {"namespace": "hndsr", "pod": "p"}}],
        }
        config = {
            "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
            "rule_files": [str(work / "alerts.yml")],
            "scrape_configs": [scrape],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [
                _prometheus_binary(),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(work / "prometheus.log", "w"),  # noqa: SIM115 - closed with the process
        )

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.api("alerts")["alerts"] if a["state"] == "firing"}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("prometheus-live")
    # As deployed (compose.yaml, export/k8s): latency summaries on, for the p99 panels.
    served = Launched(work, "--max-inflight", "2", "--max-running", "1", *SUMMARIES)
    prometheus = None
    try:
        assert wait_until(lambda: served.count("is ready") or served.proc.poll() is not None, 300)
        assert served.count("is ready"), "".join(served.lines)
        prometheus = Prometheus(work, f"127.0.0.1:{served.metrics}")
        up = 'up{job="hndsr-triton"} == 1'
        assert wait_until(lambda: _quiet(prometheus.query, up), 60), (work / "prometheus.log").read_text()
        yield served, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        served.stop(drain=False)  # drains are tested elsewhere (test_serve_cli, test_shm_hygiene)


def _quiet(fn, *args):
    try:
        return fn(*args)
    except OSError:
        return None


def _image(side: int = 64):
    from hndsr_client.image_io import read_rgb

    return read_rgb(FIXTURES / "teak_0.png")[:side, :side]


def test_every_dashboard_and_hpa_query_returns_data(stack):
    from hndsr_client import HNDSRClient, InvalidInputError

    served, prometheus = stack
    with HNDSRClient(f"127.0.0.1:{served.grpc}") as client:
        for steps in (0, 1, 0, 1):
            client.upscale(_image(), scale=4, steps=steps)
        with pytest.raises(InvalidInputError):
            client.upscale(_image(), scale=9)
    _rejected_by_triton(served.grpc)
    time.sleep(3)  # a few scrapes with the new counts, so that rate() has two samples of each
    queries = {k: v for k, v in monitoring_queries().items() if not k.startswith("alert ") and GPU_ONLY not in v}
    assert len(queries) > 10
    # A panel that shows only events ("... > 0", the failures by reason) is asked without that filter:
    # its series must exist (they do, at 0: Triton counts neither an INVALID_ARG answer of the
    # Python backend nor a request it rejects itself as a failure of the model).
    empty = {name: expr for name, expr in queries.items() if not prometheus.query(re.sub(r"\s*>\s*0$", "", expr))}
    assert not empty, empty


def _rejected_by_triton(port: int) -> None:
    """A request Triton itself refuses (IMAGE as FP32): counted in nv_inference_request_failure."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    image = grpcclient.InferInput("IMAGE", [8, 8, 3], "FP32")
    image.set_data_from_numpy(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("hndsr", [image])
    client.close()


def test_a_stage_crash_fires_stage_restarted_which_resolves_after_the_heal(stack):
    """A heal takes seconds, so the readiness alert (HNDSRModelNotReady, 10 min) does not see it:
    HNDSRStageRestarted does, from the reset of the stage's counters."""
    from hndsr.serving.server import stub_processes
    from hndsr_client import HNDSRClient

    served, prometheus = stack
    with HNDSRClient(f"127.0.0.1:{served.grpc}") as client:  # the unet has counted something
        client.upscale(_image(), scale=4, steps=1)
    time.sleep(1.5)
    assert "HNDSRStageRestarted" not in prometheus.firing()
    (unet,) = [s for s in stub_processes(served.triton()).values() if s.model == "unet"]
    healed = sum("unet: healed" in line for line in served.lines)
    os.kill(unet.pid, signal.SIGKILL)
    assert wait_until(lambda: sum("unet: healed" in line for line in served.lines) > healed, 120), served.lines
    with HNDSRClient(f"127.0.0.1:{served.grpc}") as client:  # served again after the heal
        client.upscale(_image(), scale=4, steps=1)
    assert wait_until(lambda: "HNDSRStageRestarted" in prometheus.firing(), 30), prometheus.api("alerts")
    (alert,) = [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == "HNDSRStageRestarted"]
    assert alert["labels"]["model"] == "unet"
    assert wait_until(lambda: "HNDSRStageRestarted" not in prometheus.firing(), 90)


def test_a_burst_beyond_the_queue_fires_overloaded(stack):
    from hndsr_client import HNDSRClient, OverloadedError

    served, prometheus = stack
    assert "HNDSROverloaded" not in prometheus.firing()

    def one(_: int) -> str:
        with HNDSRClient(f"127.0.0.1:{served.grpc}") as client:
            try:
                client.upscale(_image(128), scale=4, steps=4)
                return "ok"
            except OverloadedError:
                return "overloaded"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(one, range(10)))
    assert outcomes.count("overloaded") >= 4, outcomes
    assert wait_until(lambda: "HNDSROverloaded" in prometheus.firing(), 30), prometheus.api("alerts")
