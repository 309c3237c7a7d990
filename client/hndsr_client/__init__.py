"""Thin Triton client for the ``hndsr`` model (gRPC by default, HTTP too)."""

from hndsr_client.triton_client import (
    HNDSRClient,
    HNDSRError,
    InvalidInputError,
    OverloadedError,
    RequestTimeoutError,
    ServerUnavailableError,
    UpscaleResult,
)

__all__ = [
    "HNDSRClient",
    "HNDSRError",
    "InvalidInputError",
    "OverloadedError",
    "RequestTimeoutError",
    "ServerUnavailableError",
    "UpscaleResult",
]
