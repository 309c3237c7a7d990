"""No shared-memory leak under ``hndsr serve``: after ``kill -9`` of tritonserver under load (twice)
and after SIGTERM at moments of start-up, /dev/shm holds only the Python-backend pools that live
processes use, and the replica serves again. The first test is also ``hndsr serve``'s life cycle:
ready message, restarts, SIGTERM of a ready server, exit status 0, nothing left. (The pools after a
stub's crash and heal: ``test_serve_cli``'s ``hndsr up`` test.)"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from .conftest import FIXTURES, Launched, mentioning, stop_for_good, wait_until

pytestmark = pytest.mark.integration

PREFIX = "triton_python_backend_shm_region"


def pools() -> set[str]:
    return {f"/dev/shm/{name}" for name in os.listdir("/dev/shm") if name.startswith(PREFIX)}


def pools_in_use() -> set[str]:
    """Pools named on the command line of a live stub (every stub's argv[2] is its pool)."""
    from hndsr.serving.server import STUB_BINARY, processes

    return {f"/dev/shm/{p.argv[2].decode()}" for p in processes() if p.argv and p.argv[0].endswith(STUB_BINARY)}


class Load:
    """Two clients sending small requests back to back; outcomes are not judged (restarts fail some)."""

    def __init__(self, port: int) -> None:
        from hndsr_client.image_io import read_rgb

        self.image = read_rgb(FIXTURES / "teak_0.png")[:48, :48]
        self.port, self.ok = port, 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        from hndsr_client import HNDSRClient, HNDSRError

        while not self.stop.is_set():
            try:
                with HNDSRClient(f"127.0.0.1:{self.port}", timeout_s=60, retries=0) as client:
                    client.upscale(self.image, scale=4, steps=1)
                    self.ok += 1
            except HNDSRError:
                self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)


def test_no_pool_left_after_tritonserver_kills_and_a_drain(tmp_path):
    before = pools()
    serve = Launched(tmp_path)
    try:
        assert wait_until(lambda: serve.count("is ready") or serve.proc.poll() is not None, 300)
        assert serve.count("is ready: HTTP 127.0.0.1:"), serve.lines
        assert serve.count(f"gRPC 127.0.0.1:{serve.grpc}")
        load = Load(serve.grpc)
        try:
            assert wait_until(lambda: load.ok >= 2, 120)
            for round_ in range(1, 3):
                ready = serve.count("tritonserver ready in")
                os.kill(serve.triton(), signal.SIGKILL)
                assert wait_until(lambda r=ready: serve.count("tritonserver ready in") > r, 180), serve.lines
                served = load.ok
                assert wait_until(lambda s=served: load.ok > s, 120), f"not serving after kill -9 #{round_}"
                leaked = (pools() - before) - pools_in_use()
                assert not leaked, f"after kill -9 #{round_} of tritonserver: {sorted(leaked)}"
        finally:
            load.close()
        serve.proc.send_signal(signal.SIGTERM)
        # Usually 3.5 s (drained: Triton gets IDLE_STOP_S, then its process group is killed). The
        # launcher bounds it by the drain grace (60 s) + 30 s for tritonserver + 5 s for pools.
        serve.proc.wait(120)
        assert serve.proc.returncode == 0, serve.lines
        assert wait_until(lambda: serve.count("tritonserver stopped"), 10), serve.lines
        assert mentioning(str(tmp_path)) == {}  # no tritonserver or stub of this run left
        assert not (pools() - before), "after the drain"
    finally:
        stop_for_good(serve.proc, serve.work)


@pytest.mark.parametrize("moment", ["launcher started", "stubs starting"])  # ready: the test above
def test_no_pool_left_after_sigterm_during_start_up(tmp_path, moment):
    before = pools()
    serve = Launched(tmp_path)
    try:
        if moment == "launcher started":
            pass  # at once: the launcher is still importing (before its signal relay and tritonserver)
        else:
            assert wait_until(lambda: (pools() - before) and serve.triton(), 120, interval=0.02)
        serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(120)
        assert wait_until(lambda: not mentioning(str(tmp_path)), 30), mentioning(str(tmp_path))
        leaked = (pools() - before) - pools_in_use()
        assert not leaked, (moment, sorted(leaked), serve.lines[-20:])
    finally:
        stop_for_good(serve.proc, serve.work)


def test_a_64_mib_dev_shm_serves_up_to_its_limit_and_refuses_more_clearly(tmp_path):
    """``hndsr serve`` in a mount namespace whose /dev/shm is a 64 MiB tmpfs (a container's default):
    the launcher bounds the output size so the stubs' pools cannot fill it; the largest image within
    the bound is served, a larger one gets INVALID_ARG naming the limit, and the server goes on."""
    import re

    import numpy as np

    from hndsr_client import HNDSRClient, InvalidInputError
    from hndsr_client.image_io import read_rgb

    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if os.geteuid() != 0 or probe.returncode != 0:
        pytest.skip("needs root and unshare -m for a private 64 MiB /dev/shm")
    script = 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"'
    serve = Launched(tmp_path, prefix=("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"))
    proc, lines, grpc = serve.proc, serve.lines, serve.grpc
    try:
        assert wait_until(lambda: any("is ready" in ln for ln in lines) or proc.poll() is not None, 300)
        (note,) = [ln for ln in lines if "small /dev/shm" in ln]
        assert "64 MiB" in note
        limit = int(re.search(r"limited to (\d+) output pixels", note)[1])
        assert 500_000 < limit < 2_000_000  # about 1 MP in 64 MiB
        side = int(limit**0.5) // 4  # the largest square LR image whose 4x output is within the limit
        image = read_rgb(FIXTURES / "laodong_small.png")
        big = np.ascontiguousarray(np.tile(image, (side // image.shape[0] + 1, side // image.shape[1] + 1, 1)))
        with HNDSRClient(f"127.0.0.1:{grpc}", timeout_s=300) as client:
            for _ in range(2):  # twice: the pools have grown to their size for it
                assert client.upscale(big[:side, :side], scale=4, steps=1).image.shape == (4 * side, 4 * side, 3)
            with pytest.raises(InvalidInputError, match=f"exceeds the limit of {limit} output pixels"):
                client.upscale(big[: side + 8, : side + 8], scale=4, steps=0)
            assert client.upscale(big[:64, :64], scale=4, steps=1).image.shape == (256, 256, 3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        assert proc.returncode == 0, "".join(lines[-30:])
    finally:
        stop_for_good(proc, tmp_path)
