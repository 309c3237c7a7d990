"""Admission control, the watchdog's parsers and the client's error mapping (no server needed)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest
from tritonclient.utils import InferenceServerException

from hndsr.serving.admission import DRAINING, OVERLOADED, Admission, Refusal, Ticket, reset
from hndsr.serving.supervisor import parse_progress
from hndsr_client.triton_client import (
    InvalidInputError,
    OutputTooLargeError,
    OverloadedError,
    RequestTimeoutError,
    ServerUnavailableError,
    _map_error,
)


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "admission.json"
    reset(path)
    return path


def test_limit_refuses_at_once_and_release_frees(state):
    adm = Admission(state, max_inflight=3, max_running=1)
    tickets = [adm.admit() for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    t0 = time.perf_counter()
    refused = adm.admit()
    assert time.perf_counter() - t0 < 1.0  # generous: the point is "no waiting", not speed
    assert isinstance(refused, Refusal) and refused.reason == OVERLOADED
    assert "limit 3" in refused.message and "retry later" in refused.message
    adm.release(tickets[0])
    assert isinstance(adm.admit(), Ticket)
    snap = adm.snapshot()
    assert snap["inflight"] == 3 and snap["refused_total"] == 1 and snap["admitted_total"] == 4


def test_fifo_start_and_running_limit(state):
    adm = Admission(state, max_inflight=4, max_running=2)
    a, b, c = adm.admit(), adm.admit(), adm.admit()
    assert not adm.try_start(b)  # a is older
    assert adm.try_start(a) and adm.try_start(b)
    assert not adm.try_start(c)  # two running already
    adm.release(a)
    assert adm.try_start(c)
    assert adm.snapshot()["running"] == 2


def test_wait_start_is_bounded(state):
    adm = Admission(state, max_inflight=2, max_running=1)
    a, b = adm.admit(), adm.admit()
    assert adm.try_start(a)
    assert adm.wait_start(b, lambda: False, max_wait_s=0.2) is None  # gave up: bounded
    assert adm.wait_start(b, lambda: True, max_wait_s=30) is False  # the client went away
    adm.release(a)
    assert adm.wait_start(b, lambda: False, max_wait_s=30) is True


def test_draining_refuses_new_requests_only(state):
    adm = Admission(state, max_inflight=4, max_running=2)
    running = adm.admit()
    launcher = Admission(state, 1, 1)
    launcher.set_draining(True)
    refused = adm.admit()
    assert isinstance(refused, Refusal) and refused.reason == DRAINING
    assert adm.try_start(running)  # admitted before the drain: still runs
    assert launcher.snapshot()["inflight"] == 1
    adm.release(running)
    assert launcher.snapshot()["inflight"] == 0


def _hold(path, n, ready):
    adm = Admission(path, max_inflight=4, max_running=2)
    for _ in range(n):
        adm.admit()
    ready.set()
    time.sleep(60)


def test_slots_of_a_killed_process_are_reclaimed(state):
    """A stub killed with kill -9 cannot leak capacity: its pid's entries are dropped."""
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold, args=(state, 4, ready))
    child.start()
    try:
        assert ready.wait(30)
        adm = Admission(state, max_inflight=4, max_running=2)
        assert isinstance(adm.admit(), Refusal)  # the other process holds every slot
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert isinstance(adm.admit(), Ticket)
        assert adm.snapshot()["inflight"] == 1
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_limits_from_environment_win_over_config(state, monkeypatch):
    monkeypatch.setenv("HNDSR_ADMISSION_FILE", str(state))
    monkeypatch.setenv("HNDSR_MAX_INFLIGHT", "7")
    monkeypatch.delenv("HNDSR_MAX_RUNNING", raising=False)
    adm = Admission.from_env({"max_inflight": "3", "max_running": "5"})
    assert (adm.path, adm.max_inflight, adm.max_running) == (state, 7, 5)


def test_parse_progress_reads_pending_and_executions():
    text = "\n".join(
        [
            "# HELP nv_inference_pending_request_count x",
            'nv_inference_pending_request_count{model="unet",version="1"} 3',
            'nv_inference_exec_count{model="unet",version="1"} 41',
            'nv_inference_exec_count{model="encoder",version="1"} 2',
            'nv_inference_request_success{model="unet",version="1"} 40',
        ]
    )
    assert parse_progress(text) == {"unet": (3.0, 41.0), "encoder": (0.0, 2.0)}


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (
            "StatusCode.UNAVAILABLE",
            "server overloaded: 4 requests queued or running, limit 4; retry later",
            OverloadedError,
        ),
        ("503", "server overloaded: 4 requests queued or running, limit 4; retry later", OverloadedError),
        (
            "StatusCode.UNAVAILABLE",
            "request timeout expired after 2.1s (cancelled after 3 of 8 DDIM steps)",
            RequestTimeoutError,
        ),
        ("StatusCode.UNAVAILABLE", "server is shutting down: not accepting new requests", ServerUnavailableError),
        ("400", "Request for unknown model: 'hndsr' has no available versions", ServerUnavailableError),
        ("StatusCode.INVALID_ARGUMENT", "SCALE must be in [2, 8], got 9", InvalidInputError),
        ("400", "STEPS must be in [0, 50], got 999", InvalidInputError),
    ],
)
def test_client_maps_server_errors(status, message, expected):
    assert isinstance(_map_error(InferenceServerException(message, status=status)), expected)


@pytest.mark.parametrize(
    ("shape", "scale"), [((1200, 1200, 3), 4.0), ((1500, 1500, 3), 2.0)], ids=["output", "computed canvas"]
)
def test_the_servers_size_refusals_reach_the_client_as_output_too_large(shape, scale):
    from hndsr.inference.pipeline import InvalidRequest, SRParams, validate
    from hndsr_client.interface import Limits

    with pytest.raises(InvalidRequest) as refused:
        validate(shape, "uint8", SRParams(scale=scale), Limits())
    error = _map_error(InferenceServerException(str(refused.value), status="StatusCode.INVALID_ARGUMENT"))
    assert type(error) is OutputTooLargeError
    assert type(_map_error(InferenceServerException("STEPS must be in [0, 50]", "400"))) is InvalidInputError


def test_ui_says_overloaded_retry_later_and_too_large():
    pytest.importorskip("gradio")
    from hndsr_ui.app import user_message

    text = user_message(_map_error(InferenceServerException("server overloaded: ...; retry later", "503")))
    assert text.startswith("Server overloaded, retry later")
    assert user_message(OutputTooLargeError("output 9x9 exceeds the limit")).startswith("Too large: ")
    assert user_message(InvalidInputError("STEPS must be in [0, 50]")).startswith("Invalid input: ")


def test_load_test_concurrency_levels():
    from hndsr_client.load_test import _levels

    assert _levels("1:2") == [1, 2] and _levels("3") == [3] and _levels("1:8:2") == [1, 3, 5, 7]


@pytest.mark.parametrize("variant", ["cpu", "gpu", "trt"])
def test_front_and_core_configs(variant):
    """The fronts have max_inflight + 2 instances (never queue inside Triton), the core one per
    running request; the committed hndsr_core files are the generated ones."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from hndsr.inference.pipeline import Sampling
    from hndsr.models.hndsr import HNDSR
    from hndsr.serving.admission import CORE_INSTANCES, DEFAULT_MAX_INFLIGHT, FRONT_INSTANCES, SPARE_FRONT_INSTANCES
    from hndsr.serving.configs import core_config, orchestrator_config
    from hndsr.serving.export import DEFAULT_WEIGHTS as WEIGHTS

    from .conftest import ROOT

    def parse(text: str):
        return text_format.Parse(text, model_config_pb2.ModelConfig())

    front = parse(orchestrator_config(variant, "v"))
    assert front.instance_group[0].count == FRONT_INSTANCES == DEFAULT_MAX_INFLIGHT + SPARE_FRONT_INSTANCES
    served = Sampling.of(HNDSR.load(WEIGHTS))
    core = parse(core_config(variant, served))
    assert Sampling.from_json(core.parameters["sampling"].string_value) == served
    assert core.name == "hndsr_core" and core.instance_group[0].count == CORE_INSTANCES
    assert [i.name for i in core.input] == [i.name for i in front.input] + ["CONTROL"]
    # The core streams PROGRESS to the fronts over decoupled BLS (the stream front relays it).
    assert [o.name for o in core.output] == [o.name for o in front.output] + ["PROGRESS"]
    assert core.model_transaction_policy.decoupled
    path = (
        ROOT / "model_repository" / "hndsr_core" / ("config.pbtxt" if variant == "cpu" else f"configs/{variant}.pbtxt")
    )
    assert path.read_text() == core_config(variant, served)


@pytest.mark.integration
def test_compute_stubs_yield_the_cpu_to_the_fronts(triton):
    """Refusals stay fast under load: the pipeline and stage stubs run at a lower CPU priority
    than the front models that admit, refuse and answer health."""
    import os

    from hndsr.serving.admission import COMPUTE_NICENESS
    from hndsr.serving.server import stub_processes

    stubs = stub_processes(triton["proc"].pid)
    base = os.getpriority(os.PRIO_PROCESS, triton["proc"].pid)
    nice = {s.model: os.getpriority(os.PRIO_PROCESS, s.pid) - base for s in stubs.values()}
    assert set(nice) == {"hndsr", "hndsr_stream", "hndsr_core", "encoder", "prior", "unet", "decoder"}
    assert {m: n for m, n in nice.items() if m.startswith("hndsr") and m != "hndsr_core"} == {
        "hndsr": 0,
        "hndsr_stream": 0,
    }
    assert {m: n for m, n in nice.items() if m not in ("hndsr", "hndsr_stream")} == dict.fromkeys(
        ("hndsr_core", "encoder", "prior", "unet", "decoder"), COMPUTE_NICENESS
    )
