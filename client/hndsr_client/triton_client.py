"""Client library: send an LR image to the ``hndsr`` Triton model, get the SR image and its info."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from hndsr_client.arrays import request_arrays
from hndsr_client.interface import (
    DEFAULT_SCALE,
    DEFAULT_STEPS,
    DRAINING,
    INPUTS,
    MODEL,
    OVERLOADED,
    STREAM_MODEL,
    TILING_PARAMETERS,
    TIMEOUT,
    TOO_LARGE,
    mentions,
)

GRPC_MAX_MESSAGE = 2**31 - 1
"""gRPC's 4 MB default is far below a 16 MP RGB result (48 MB); allow up to 2 GiB."""


class HNDSRError(RuntimeError):
    """Base class of the errors this client raises."""


class InvalidInputError(HNDSRError):
    """The server rejected a field of the request (the message names the field and the limit)."""


class OutputTooLargeError(InvalidInputError):
    """The output (or the canvas a scale below 4 is computed on) exceeds the server's pixel limit."""


class OverloadedError(HNDSRError):
    """The server is out of capacity (queue full or rate limited); retry later."""


class ServerUnavailableError(HNDSRError):
    """The server is down, unreachable or still loading."""


class RequestTimeoutError(HNDSRError):
    """The request did not finish within the client timeout."""


_TRITON_INVALID = ("unexpected shape", "data-type")
"""Triton's own messages for a malformed request (inside a gRPC stream they come without a status)."""
_RELOADING = ("not healthy", "stub process", "no available versions", "is not ready", "unknown model")
"""Triton's messages for a front model whose stub crashed (the request it held is lost) or that is
being reloaded: the launcher brings it back within seconds, so the same request (seeded, hence
idempotent) is sent again."""
_UNREACHABLE = ("failed to connect", "connection refused", "socket closed", "connection reset")
"""gRPC's and HTTP's messages for a server that is down or not listening."""


def _names_a_field(message: str) -> bool:
    """The server's own validation errors name the field (an input tensor) first, or the output limit."""
    return message.startswith(tuple(f"{t.name} " for t in INPUTS)) or TOO_LARGE in message


def _lost_to_a_reload(message: str) -> bool:
    """Not while draining: ours ("server is shutting down") or Triton's own ("Server is shutting down")."""
    return mentions(message, _RELOADING) and not mentions(message, (DRAINING,))


RETRY_BACKOFF_S = (0.5, 1.0, 2.0)
"""Waits before the retries of a request lost to a crashed or reloading front (a reload takes ~2 s)."""


def _map_error(exc: InferenceServerException) -> HNDSRError:
    """The status code first; for UNAVAILABLE (and inside a gRPC stream, where errors carry no
    status) the message heads of ``hndsr_client.interface`` and Triton's own messages."""
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if "INVALID_ARG" in status or _names_a_field(message) or mentions(message, _TRITON_INVALID):
        return OutputTooLargeError(message) if TOO_LARGE in message else InvalidInputError(message)
    if OVERLOADED in message or "RESOURCE_EXHAUSTED" in status or status == "429":
        return OverloadedError(message if "retry later" in message else f"{OVERLOADED}, retry later: {message}")
    if TIMEOUT in message or "DEADLINE_EXCEEDED" in status or mentions(message, ("deadline exceeded", "timed out")):
        return RequestTimeoutError(f"request timed out: {message}")
    # Draining, a model being reloaded, or no server at all.
    if "UNAVAILABLE" in status or status == "503" or mentions(message, (DRAINING, *_RELOADING, *_UNREACHABLE)):
        return ServerUnavailableError(f"server unavailable: {message}")
    if status == "400":  # HTTP's status for other errors of the request
        return InvalidInputError(message)
    return HNDSRError(message)


@dataclass
class UpscaleResult:
    image: np.ndarray
    """uint8 [H', W', 3]"""
    info: dict
    latency_s: float


class HNDSRClient:
    """``protocol`` is "grpc" (url like 127.0.0.1:8001) or "http" (127.0.0.1:8000)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        protocol: str = "grpc",
        timeout_s: float = 900.0,
        deadline_s: float | None = None,
        retries: int = len(RETRY_BACKOFF_S),
    ) -> None:
        """``timeout_s``: how long this client waits. ``deadline_s``: sent as Triton's request timeout;
        the server gives up on the request once it has passed (while queued or between DDIM steps)
        and answers "request timeout expired" (``RequestTimeoutError``). ``retries``: how often
        ``upscale`` sends a request again that a crashed or reloading front lost (waits
        ``RETRY_BACKOFF_S``; never for refusals, invalid input, timeouts or a draining server)."""
        if protocol not in ("grpc", "http"):
            raise ValueError("protocol must be 'grpc' or 'http'")
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.retries = retries
        if protocol == "grpc":
            self._mod = grpcclient
            self._client = grpcclient.InferenceServerClient(
                url,
                channel_args=[
                    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                ],
            )
        else:
            self._mod = httpclient
            self._client = httpclient.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HNDSRClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self) -> dict:
        """Liveness, readiness and the ``hndsr`` model's readiness."""
        try:
            return {
                "live": bool(self._client.is_server_live()),
                "ready": bool(self._client.is_server_ready()),
                "model_ready": bool(self._client.is_model_ready(MODEL)),
            }
        except InferenceServerException as exc:
            raise _map_error(exc) from None

    def metadata(self) -> dict:
        try:
            meta = self._client.get_model_metadata(MODEL)
            config = self._client.get_model_config(MODEL)
        except InferenceServerException as exc:
            raise _map_error(exc) from None
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            meta, config = MessageToDict(meta), MessageToDict(config)
        return {"metadata": meta, "config": config}

    def tiling(self) -> dict[str, int]:
        """The server's canvas tiling: ``tile``, ``overlap`` and ``latent_factor`` in HR pixels, and
        ``min_model_scale`` (from the ``hndsr`` model config's parameters, ``interface.TILING_PARAMETERS``)."""
        config = self.metadata()["config"]
        params = config.get("config", config).get("parameters", {})  # gRPC wraps it in "config"
        try:
            # gRPC's JSON form spells the field stringValue, HTTP's string_value.
            values = [params[name] for name in TILING_PARAMETERS]
            tile, overlap, factor, min_scale = (int(v.get("string_value", v.get("stringValue"))) for v in values)
        except KeyError as exc:
            raise HNDSRError(f"the server's hndsr model config has no {exc.args[0]} parameter") from None
        return {"tile": tile, "overlap": overlap, "latent_factor": factor, "min_model_scale": min_scale}

    def _input(self, name: str, array: np.ndarray, datatype: str):
        tensor = self._mod.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def _request(self, image: np.ndarray, scale: float, steps: int, seed: int, eta: float, ensemble: int) -> list:
        if np.asarray(image).dtype != np.uint8:
            raise InvalidInputError(f"IMAGE must be uint8, got {np.asarray(image).dtype}")
        arrays = request_arrays(image, scale, steps, seed, eta, ensemble)
        return [self._input(t.name, arrays[t.name], t.datatype) for t in INPUTS]

    def _deadline(self) -> dict:
        return {"timeout": int(self.deadline_s * 1e6)} if self.deadline_s else {}

    @staticmethod
    def _info(result) -> dict:
        raw = result.as_numpy("INFO").reshape(-1)[0]
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)

    def upscale(
        self,
        image: np.ndarray,
        scale: float = DEFAULT_SCALE,
        steps: int = DEFAULT_STEPS,
        seed: int = 0,
        eta: float = 0.0,
        ensemble: int = 1,
    ) -> UpscaleResult:
        """Super-resolve a uint8 RGB image (``ensemble``: views averaged, see the interface's
        ENSEMBLE). Raises one of the ``HNDSRError`` subclasses."""
        inputs = self._request(image, scale, steps, seed, eta, ensemble)
        outputs = [self._mod.InferRequestedOutput("SR_IMAGE"), self._mod.InferRequestedOutput("INFO")]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        kwargs.update(self._deadline())
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                result = self._client.infer(MODEL, inputs, outputs=outputs, **kwargs)
                break
            except InferenceServerException as exc:
                wait = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                lost = _lost_to_a_reload(exc.message() or str(exc))
                if not lost or attempt == self.retries or time.perf_counter() - start + wait > self.timeout_s:
                    raise _map_error(exc) from None
                time.sleep(wait)
        return UpscaleResult(result.as_numpy("SR_IMAGE"), self._info(result), time.perf_counter() - start)

    def upscale_streaming(
        self,
        image: np.ndarray,
        scale: float = DEFAULT_SCALE,
        steps: int = DEFAULT_STEPS,
        seed: int = 0,
        eta: float = 0.0,
        ensemble: int = 1,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> UpscaleResult:
        """Like ``upscale`` but through ``hndsr_stream`` (gRPC only): ``on_progress(done, total)`` is
        called as the server reports each DDIM step."""
        if self.protocol != "grpc":
            raise ValueError("progress streaming needs the gRPC protocol")
        inputs = self._request(image, scale, steps, seed, eta, ensemble)
        # Fail fast when the server is down: a stream to a dead address can wait out its timeout.
        try:
            self._client.is_server_live(client_timeout=10)
        except InferenceServerException as exc:
            raise _map_error(exc) from None
        responses: queue.Queue = queue.Queue()
        start = time.perf_counter()
        self._client.start_stream(callback=lambda result, error: responses.put((result, error)))
        try:
            self._client.async_stream_infer(STREAM_MODEL, inputs, **self._deadline())
            deadline = start + self.timeout_s
            while True:
                try:
                    result, error = responses.get(timeout=max(0.1, deadline - time.perf_counter()))
                except queue.Empty:
                    raise RequestTimeoutError(f"no result within {self.timeout_s:.0f}s") from None
                if error is not None:
                    raise _map_error(error)
                names = {o.name for o in result.get_response().outputs}
                if "SR_IMAGE" in names:
                    return UpscaleResult(result.as_numpy("SR_IMAGE"), self._info(result), time.perf_counter() - start)
                if "PROGRESS" in names and on_progress is not None:
                    done, total = (int(v) for v in result.as_numpy("PROGRESS"))
                    on_progress(done, total)
        finally:
            self._client.stop_stream(cancel_requests=True)
