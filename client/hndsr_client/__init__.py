"""Thin Triton client for the ``hndsr`` model (gRPC by default, HTTP too).

The client classes load on first use, so ``import hndsr_client`` (and ``hndsr_client.interface``,
which the server imports) does not pull in the gRPC and HTTP client libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "HNDSRClient",
    "HNDSRError",
    "InvalidInputError",
    "OutputTooLargeError",
    "OverloadedError",
    "RequestTimeoutError",
    "ServerUnavailableError",
    "UpscaleResult",
]

if TYPE_CHECKING:
    from hndsr_client.triton_client import (
        HNDSRClient,
        HNDSRError,
        InvalidInputError,
        OutputTooLargeError,
        OverloadedError,
        RequestTimeoutError,
        ServerUnavailableError,
        UpscaleResult,
    )


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("hndsr_client.triton_client"), name)
    raise AttributeError(f"module 'hndsr_client' has no attribute {name!r}")
