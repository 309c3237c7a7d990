"""The heap trimmer hands memory back when the core is idle or every N requests, never in between."""

from __future__ import annotations

import threading
import time

from hndsr.serving.heap import HeapTrimmer, release_free_memory


class _Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()


def _serve(trimmer: HeapTrimmer, n: int) -> None:
    for _ in range(n):
        with trimmer.serving():
            pass


def test_trims_once_after_an_idle_period():
    release = _Counter()
    trimmer = HeapTrimmer(idle_s=0.05, every=1000, release=release)
    _serve(trimmer, 3)
    assert release.event.wait(10)
    time.sleep(0.2)
    assert release.calls == 1  # three requests, one trim


def test_never_trims_while_a_request_runs_or_before_any_request():
    release = _Counter()
    trimmer = HeapTrimmer(idle_s=0.01, every=1000, release=release)
    assert not release.event.wait(0.2)
    _serve(trimmer, 1)
    assert release.event.wait(10)
    release.event.clear()
    with trimmer.serving():
        _serve(trimmer, 1)  # a second request ends while the first still runs
        assert not release.event.wait(0.3)
    assert release.event.wait(10)
    assert release.calls == 2


def test_under_continuous_load_trims_every_n_requests():
    release = _Counter()
    trimmer = HeapTrimmer(idle_s=3600.0, every=4, release=release)
    with trimmer.serving():  # the core is never idle
        _serve(trimmer, 2)
        assert not release.event.wait(0.2)
        _serve(trimmer, 2)
        assert release.event.wait(10)
    assert release.calls == 1


def test_release_free_memory_runs():
    release_free_memory()
