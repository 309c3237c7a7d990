"""``hndsr-reliability``: overload, deadline, crash, drain, soak and determinism against a real ``hndsr serve``.

Starts ``hndsr serve`` on free loopback ports (its own work directory), drives it with the client
library and raw Triton clients, and prints one table of measured numbers against the targets of
the reliability issue. Every loop is bounded in count and time. ``--quick`` is the CI version
(``tests/test_reliability.py``): fewer requests, one crash of each stage but the unet (whose heal
CI tests elsewhere) and of the core, and timing targets relaxed five-fold because CI shares two
busy cores; the full run applies the targets as written.

Scenarios, in order (the drain ends the server, so it comes last):
soak + determinism -> overload -> deadline -> crash (kill -9 of each stage stub, SIGSTOP of one)
-> drain (SIGTERM with requests in flight).

Modules: ``profile`` (what a run does, the report), ``served`` (the server under test, readiness
poller, light load), ``soak`` (soak and determinism), ``long_soak``, ``faults`` (overload,
deadline, crashes, drain), ``suite`` (the driver and the command).
"""

from hndsr_reliability.profile import FULL, QUICK, Profile, Report
from hndsr_reliability.suite import app, main, run_suite

__all__ = ["FULL", "QUICK", "Profile", "Report", "app", "main", "run_suite"]
