"""Scene mode: super-resolve a georeferenced raster of any size through Triton, chunk by chunk.

1. Plan: the LR scene is cut into overlapping chunks (``chunk`` LR px per side, ``overlap`` shared
   with each neighbour, the last one in a row or column cut at the edge) whose outputs stay under
   the server's output-pixel limit. Chunk starts fall on the server's tile grid of the whole image
   (else at least on its latent grid), so chunk interiors match the image sent whole.
2. Send: a thread pool reads each chunk's window, maps it to uint8 RGB (``client.georaster``) and
   sends it to one of the endpoints (round-robin; a failed or refused chunk is retried with
   exponential back-off on the next endpoint). Each result is saved atomically in a sidecar store
   ``OUT.parts/`` whose file names are the journal: a rerun skips the chunks found there.
3. Assemble: output block by output block (at most a chunk's output at a time), the saved chunks
   that touch the block are blended with separable Hann ramps over their overlaps (a numpy twin of
   ``hndsr.inference.tiling``), nodata, extra bands and the dtype are restored, and the block is written to a
   tiled GeoTIFF, which is then copied into a Cloud-Optimized GeoTIFF with overviews.

No torch here: the client stays installable without it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.windows import Window
from tqdm import tqdm

from hndsr_client.georaster import (
    SceneInputError,
    SceneSource,
    Stretch,
    cog_blocksize,
    invalid_mask,
    model_input,
    output_profile,
    restore_nodata,
    write_cog,
)
from hndsr_client.interface import DEFAULT_SCALE, DEFAULT_STEPS, ENSEMBLE_MAX, Limits
from hndsr_client.scene_plan import (
    DEFAULT_OVERLAP,
    Axis,
    Chunk,
    ChunkPlan,
    SceneError,
    SceneParamError,
    Tiling,
    alignment,
    plan_chunks,
)
from hndsr_client.scene_store import ChunkStore
from hndsr_client.triton_client import HNDSRClient, HNDSRError, InvalidInputError

RASTER_SUFFIXES = (".tif", ".tiff")
GDAL_CACHE_MB = 256


# ----------------------------------------------------------------------------------------------- send


class Upscaler(Protocol):
    def upscale(self, image: np.ndarray, scale: float, steps: int, seed: int, eta: float, ensemble: int = 1): ...

    def close(self) -> None: ...


def chunk_seed(seed: int, chunk_id: int) -> int:
    """Each chunk its own noise seed (a fixed function of the run's seed; chunk 0 gets the seed
    itself), so that steps > 0 do not repeat one noise pattern in every chunk."""
    return (seed + chunk_id * 0x9E3779B97F4A7C15) % 2**63


class Dispatcher:
    """Sends images round-robin over endpoints; retries failures with back-off on the next endpoint.

    ``InvalidInputError`` is not retried (the request itself is wrong); every other ``HNDSRError``
    (overloaded, unavailable, timeout, internal) is, up to ``tries`` attempts in all."""

    def __init__(
        self,
        urls: list[str],
        client_factory: Callable[[str], Upscaler],
        tries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        on_retry: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.urls = list(urls)
        self.stop = stop or threading.Event()
        """Set: back-off waits end and no further try is made."""
        self.client_factory = client_factory
        self.tries = tries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.on_retry = on_retry
        self.requests = dict.fromkeys(self.urls, 0)
        self.retries = 0
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[Upscaler] = []

    def _client(self, url: str) -> Upscaler:
        clients = self._local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = self.client_factory(url)
            with self._lock:
                self._clients.append(clients[url])
        return clients[url]

    def upscale(
        self, image: np.ndarray, scale: float, steps: int, seed: int, eta: float, what: str, ensemble: int = 1
    ) -> np.ndarray:
        with self._lock:
            first = next(self._next)
        last: Exception | None = None
        for attempt in range(self.tries):
            url = self.urls[(first + attempt) % len(self.urls)]
            with self._lock:
                self.requests[url] += 1
            try:
                client = self._client(url)
                return client.upscale(image, scale=scale, steps=steps, seed=seed, eta=eta, ensemble=ensemble).image
            except InvalidInputError as exc:
                raise SceneError(f"{what}: refused by {url}: {exc}") from None
            except HNDSRError as exc:
                last = exc
            if attempt + 1 < self.tries:
                delay = min(self.backoff_max_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
                with self._lock:
                    self.retries += 1
                if self.on_retry:
                    self.on_retry(f"{what}: {type(last).__name__} from {url}; retrying in {delay:.1f}s")
                if self.stop.wait(delay):
                    raise SceneError(f"{what}: run stopped after {attempt + 1} tries: {last}")
        raise SceneError(f"{what}: failed after {self.tries} tries: {last}")

    def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()


# ----------------------------------------------------------------------------------------------- run


@dataclass
class SceneOptions:
    scale: float = DEFAULT_SCALE
    steps: int = DEFAULT_STEPS
    seed: int = 0
    eta: float = 0.0
    ensemble: int = 1
    """Self-ensemble views per chunk (the interface's ENSEMBLE). Above 1 each view is tiled from
    its own corner, so chunk interiors match a whole-image request only approximately."""
    chunk: int | None = None
    """LR px per chunk side (None: ``DEFAULT_CHUNK``, or less where the scale needs it)."""
    overlap: int = DEFAULT_OVERLAP
    workers: int | None = None
    """Chunks in flight at once (None: 2 per endpoint)."""
    value_range: tuple[float, float] | None = None
    """Stretch range of non-uint8 input (None: 2-98 % percentiles)."""
    tries: int = 5
    backoff_s: float = 1.0
    protocol: str = "grpc"
    timeout_s: float = 900.0
    fresh: bool = False
    """Discard chunks of an earlier interrupted run instead of resuming."""
    quiet: bool = False

    def check(self, limits: Limits = Limits()) -> None:
        """Settings checks that need no input (errors name the field and the limit)."""
        if not (math.isfinite(self.scale) and limits.scale_min <= self.scale <= limits.scale_max):
            raise SceneParamError(f"scale must be in [{limits.scale_min:g}, {limits.scale_max:g}], got {self.scale:g}")
        if not 0 <= self.steps <= limits.steps_max:
            raise SceneParamError(f"steps must be in [0, {limits.steps_max}], got {self.steps}")
        if not (math.isfinite(self.eta) and 0.0 <= self.eta <= 1.0):
            raise SceneParamError(f"eta must be in [0, 1], got {self.eta:g}")
        if not 1 <= self.ensemble <= ENSEMBLE_MAX:
            raise SceneParamError(f"ensemble must be in [1, {ENSEMBLE_MAX}], got {self.ensemble}")
        if self.workers is not None and not 1 <= self.workers <= 256:
            raise SceneParamError(f"workers must be in [1, 256], got {self.workers}")
        if not 1 <= self.tries <= 100:
            raise SceneParamError(f"tries must be in [1, 100], got {self.tries}")
        if self.protocol not in ("grpc", "http"):
            raise SceneParamError(f"protocol must be grpc or http, got {self.protocol!r}")
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise SceneParamError(f"range must be LO < HI, got {self.value_range[0]:g} {self.value_range[1]:g}")


@dataclass
class SceneReport:
    src: str
    dst: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    chunks: int
    sent: int
    resumed: int
    skipped_nodata: int
    retries: int
    requests: dict[str, int]
    seconds: float
    stretch: str | None

    @property
    def output_mp_per_s(self) -> float:
        return self.output_size[0] * self.output_size[1] / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        h, w = self.input_size
        oh, ow = self.output_size
        return (
            f"{self.src} ({w}x{h}) -> {self.dst} ({ow}x{oh}): {self.chunks} chunks, {self.sent} sent, "
            f"{self.resumed} resumed, {self.skipped_nodata} all-nodata, {self.retries} retries, "
            f"{self.seconds:.1f}s, {self.output_mp_per_s:.3f} output MP/s"
        )


def parts_dir(dst: Path) -> Path:
    """The sidecar store of ``dst``'s finished chunks."""
    return dst.with_name(dst.name + ".parts")


def server_tiling(urls: list[str], options: SceneOptions) -> Tiling:
    """The canvas tiling of the first server that answers (every replica serves the same model)."""
    errors = []
    for url in urls:
        try:
            with HNDSRClient(url, options.protocol, timeout_s=30) as client:
                return Tiling(**client.tiling())
        except HNDSRError as exc:
            errors.append(f"{url}: {exc}")
    raise SceneError("no server told its tiling: " + "; ".join(errors))


def _default_factory(options: SceneOptions) -> Callable[[str], Upscaler]:
    return lambda url: HNDSRClient(url, options.protocol, options.timeout_s)


def _run_meta(src: SceneSource, plan: ChunkPlan, options: SceneOptions, stretch: Stretch | None) -> dict:
    stat = src.path.stat()
    return {
        "src": str(src.path.resolve()),
        "src_size": stat.st_size,
        "src_mtime_ns": stat.st_mtime_ns,
        "scale": options.scale,
        "steps": options.steps,
        "seed": options.seed,
        "eta": options.eta,
        "ensemble": options.ensemble,
        "chunk": plan.chunk,
        "overlap": plan.overlap,
        "tiling": asdict(plan.tiling),
        "stretch": asdict(stretch) if stretch else None,
    }


def upscale_scene(
    src_path: str | Path,
    dst_path: str | Path,
    urls: list[str],
    options: SceneOptions | None = None,
    client_factory: Callable[[str], Upscaler] | None = None,
    tiling: Tiling | None = None,
) -> SceneReport:
    """Super-resolve the raster ``src_path`` into the Cloud-Optimized GeoTIFF ``dst_path``. ``tiling``:
    the servers' canvas tiling (default: asked from the first server that answers)."""
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):  # GDAL's block cache: 5 % of RAM by default
        return _upscale_scene(Path(src_path), Path(dst_path), urls, options or SceneOptions(), client_factory, tiling)


def _upscale_scene(
    src_path: Path,
    dst_path: Path,
    urls: list[str],
    options: SceneOptions,
    client_factory: Callable[[str], Upscaler] | None,
    tiling: Tiling | None,
) -> SceneReport:
    start = time.perf_counter()
    if not urls:
        raise SceneParamError("url: give at least one server address")
    if dst_path.suffix.lower() not in RASTER_SUFFIXES:
        raise SceneParamError(f"output must end in .tif or .tiff, got {dst_path.name!r}")
    options.check()
    src = SceneSource.open(src_path)
    tiling = tiling or server_tiling(urls, options)
    plan = plan_chunks(src.height, src.width, options.scale, tiling, options.chunk, options.overlap)
    stretch = src.stretch(options.value_range)
    log = (lambda msg: None) if options.quiet else (lambda msg: tqdm.write(msg, file=sys.stderr))
    if stretch is not None:
        log(f"{src_path.name}: {src.dtype} RGB stretched to 8 bits ({stretch.describe()}), mapped back on output")
    store = ChunkStore(parts_dir(dst_path))
    store.open(_run_meta(src, plan, options, stretch), fresh=options.fresh)
    dispatcher = Dispatcher(
        urls,
        client_factory or _default_factory(options),
        options.tries,
        options.backoff_s,
        on_retry=None if options.quiet else log,
    )
    try:
        sent, resumed, skipped = _send_chunks(src, plan, store, dispatcher, options, stretch)
    except BaseException:
        store.close()
        raise
    finally:
        dispatcher.close()
    tags = {
        "HNDSR_SCALE": f"{options.scale:g}",
        "HNDSR_STEPS": str(options.steps),
        "HNDSR_SEED": str(options.seed),
        "HNDSR_CHUNK": f"{plan.chunk} LR px, overlap {plan.overlap}",
        "HNDSR_STRETCH": stretch.describe() if stretch else "none (uint8)",
    }
    try:
        _assemble(src, plan, store, skipped, stretch, dst_path, tags)
    finally:
        store.close()
    store.remove()
    return SceneReport(
        str(src_path),
        str(dst_path),
        (src.height, src.width),
        (plan.out_height, plan.out_width),
        len(plan.chunks),
        sent,
        resumed,
        len(skipped),
        dispatcher.retries,
        dispatcher.requests,
        time.perf_counter() - start,
        stretch.describe() if stretch else None,
    )


def _send_chunks(
    src: SceneSource,
    plan: ChunkPlan,
    store: ChunkStore,
    dispatcher: Dispatcher,
    options: SceneOptions,
    stretch: Stretch | None,
) -> tuple[int, int, set[int]]:
    """Phase 1: every chunk not yet in the store is read, sent and saved. Returns (sent, resumed, all-nodata ids)."""
    chunks = plan.chunks
    done = store.done() & {c.id for c in chunks}
    todo = [c for c in chunks if c.id not in done]
    workers = options.workers or 2 * len(dispatcher.urls)
    read_lock = threading.Lock()
    stop = dispatcher.stop
    skipped: set[int] = set()

    with rasterio.open(src.path) as ds:

        def work(chunk: Chunk) -> bool | None:
            """True when sent, False when all nodata, None when the run is stopping."""
            if stop.is_set():
                return None
            try:
                return send(chunk)
            except BaseException:
                stop.set()  # the chunks queued behind this one are not started
                raise

        def send(chunk: Chunk) -> bool:
            with read_lock:
                bands = ds.read(window=chunk.window)
            invalid = invalid_mask(bands, src.nodata)
            image = model_input(bands[[i - 1 for i in src.rgb_indexes]], invalid, stretch)
            if image is None:
                return False
            what = f"chunk {chunk.id} (row {chunk.row}, col {chunk.col})"
            sr = dispatcher.upscale(
                image,
                options.scale,
                options.steps,
                chunk_seed(options.seed, chunk.id),
                options.eta,
                what,
                ensemble=options.ensemble,
            )
            expected = (int(chunk.out_window.height), int(chunk.out_window.width), 3)
            if sr.shape != expected:
                raise SceneError(f"{what}: server returned {sr.shape}, expected {expected}")
            store.save(chunk.id, sr)
            return True

        # The bar counts output megapixels (each chunk's share of the scene), so rate and ETA are in MP.
        area = {c.id: c.out_window.height * c.out_window.width for c in chunks}
        share = plan.out_height * plan.out_width / 1e6 / sum(area.values())
        bar = tqdm(
            total=plan.out_height * plan.out_width / 1e6,
            initial=share * sum(area[i] for i in done),
            unit="MP",
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} output MP [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]",
            disable=options.quiet,
            file=sys.stderr,
            leave=False,
        )
        finished_chunks = len(done)
        bar.set_postfix_str(f"{finished_chunks}/{len(chunks)} chunks")
        sent = 0
        pending: dict[Future, Chunk] = {}
        queue = iter(todo)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scene")
        try:
            while True:
                while len(pending) < workers + 1 and (chunk := next(queue, None)) is not None:
                    pending[pool.submit(work, chunk)] = chunk
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunk = pending.pop(future)
                    result = future.result()
                    if result is None:
                        continue
                    if result:
                        sent += 1
                    else:
                        skipped.add(chunk.id)
                    finished_chunks += 1
                    bar.set_postfix_str(f"{finished_chunks}/{len(chunks)} chunks", refresh=False)
                    bar.update(share * area[chunk.id])
        except BaseException as exc:
            stop.set()
            # Chunks already running are let finish (and saved), unless the user pressed Ctrl-C.
            pool.shutdown(wait=not isinstance(exc, KeyboardInterrupt), cancel_futures=True)
            bar.close()
            if not options.quiet:
                print(
                    f"stopped: {len(store.done())} of {len(chunks)} chunks saved in {store.root}; "
                    "run the same command again to resume",
                    file=sys.stderr,
                )
            raise
        pool.shutdown()
        bar.close()
    return sent, len(done), skipped


def _nearest_index(lr_start: int, lr_len: int, out_len: int) -> np.ndarray:
    """LR index of each HR pixel of a block (nearest neighbour, pixel-area convention)."""
    return lr_start + np.minimum(((np.arange(out_len) + 0.5) * lr_len / out_len).astype(np.int64), lr_len - 1)


def _block_axis(axis: Axis, i: int, lr_len: int, out_len: int) -> tuple[int, int, int, int]:
    """Block ``i`` of an axis: HR [o0, o1) from its chunk's start to the next chunk's, LR [l0, l1) likewise."""
    o0, l0 = axis.out_starts[i], axis.starts[i]
    o1 = axis.out_starts[i + 1] if i + 1 < len(axis) else out_len
    l1 = axis.starts[i + 1] if i + 1 < len(axis) else lr_len
    return o0, o1, l0, l1


def _assemble(
    src: SceneSource,
    plan: ChunkPlan,
    store: ChunkStore,
    skipped: set[int],
    stretch: Stretch | None,
    dst: Path,
    tags: dict[str, str],
) -> None:
    """Phase 2: blend the saved chunks block by block into a tiled GeoTIFF, then copy it to a COG."""
    done = store.done()
    missing = [c.id for c in plan.chunks if c.id not in done and c.id not in skipped]
    if missing:
        raise SceneError(f"chunks {missing[:10]} are missing from {store.root}")
    wy, wx = plan.weights()
    ncols = len(plan.cols)
    out_h, out_w = plan.out_height, plan.out_width
    assembled = store.root / "assembled.tif"
    extra = src.extra_indexes
    margin = 4 * alignment(plan.scale, plan.tiling.latent_factor)
    with (
        rasterio.open(src.path) as ds,
        rasterio.open(assembled, "w", **output_profile(src, out_h, out_w, plan.scale)) as out,
    ):
        out.colorinterp = src.colorinterp
        if src.area_or_point:
            out.update_tags(AREA_OR_POINT=src.area_or_point)
        for r, c in itertools.product(range(len(plan.rows)), range(ncols)):
            y0, y1, ly0, ly1 = _block_axis(plan.rows, r, plan.height, out_h)
            x0, x1, lx0, lx1 = _block_axis(plan.cols, c, plan.width, out_w)
            if y1 <= y0 or x1 <= x0:
                continue
            acc = np.zeros((3, y1 - y0, x1 - x0), dtype=np.float32)
            norm = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
            # Block i of an axis meets chunks i - 2 (rarely: before a pinned last chunk) to i only.
            for rr, cc in itertools.product(range(max(0, r - 2), r + 1), range(max(0, c - 2), c + 1)):
                cy0, cx0 = plan.rows.out_starts[rr], plan.cols.out_starts[cc]
                cy1, cx1 = cy0 + plan.rows.out_sizes[rr], cx0 + plan.cols.out_sizes[cc]
                iy0, iy1, ix0, ix1 = max(y0, cy0), min(y1, cy1), max(x0, cx0), min(x1, cx1)
                chunk_id = rr * ncols + cc
                if iy1 <= iy0 or ix1 <= ix0 or chunk_id in skipped:
                    continue
                part = store.load(chunk_id)[iy0 - cy0 : iy1 - cy0, ix0 - cx0 : ix1 - cx0]
                w = np.outer(wy[rr][iy0 - cy0 : iy1 - cy0], wx[cc][ix0 - cx0 : ix1 - cx0]).astype(np.float32)
                acc[:, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] += np.moveaxis(part, -1, 0) * w
                norm[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] += w
            rgb = np.clip(np.rint(acc / np.maximum(norm, 1e-12)), 0, 255).astype(np.uint8)

            lr = ds.read(window=Window(lx0, ly0, lx1 - lx0, ly1 - ly0))
            lr_invalid = invalid_mask(lr, src.nodata)
            invalid = lr_invalid[
                np.ix_(_nearest_index(0, ly1 - ly0, y1 - y0), _nearest_index(0, lx1 - lx0, x1 - x0))
            ] | (norm == 0)
            block = _to_source_bands(rgb, src, stretch)
            if extra:
                block = np.concatenate([block, _resampled_extra(ds, src, plan, margin, (ly0, ly1, lx0, lx1))])
            block = restore_nodata(block, invalid, src.nodata)
            out.write(block, window=Window(x0, y0, x1 - x0, y1 - y0))
    write_cog(assembled, dst, tags, cog_blocksize(out_h, out_w))


def _to_source_bands(rgb: np.ndarray, src: SceneSource, stretch: Stretch | None) -> np.ndarray:
    """Model output [3, h, w] uint8 -> the source's RGB bands (or grey band) in its dtype."""
    values = stretch.from_uint8(rgb, np.dtype(src.dtype)) if stretch is not None else rgb.astype(src.dtype)
    if src.count == 1:
        mean = values.astype(np.float64).mean(axis=0, keepdims=True)
        return np.rint(mean).astype(src.dtype) if np.dtype(src.dtype).kind in "iu" else mean.astype(src.dtype)
    return values


def _resampled_extra(ds, src: SceneSource, plan: ChunkPlan, margin: int, lr_box: tuple[int, int, int, int]):
    """The extra bands (NIR, alpha, ...) of an LR block resampled to its HR block (cubic; nearest for
    alpha), read with a margin so that the kernel sees the neighbours across block edges."""
    ly0, ly1, lx0, lx1 = lr_box
    wy0, wy1 = max(0, ly0 - margin), min(plan.height, ly1 + margin)
    wx0, wx1 = max(0, lx0 - margin), min(plan.width, lx1 + margin)

    def out_y(lr: int) -> int:
        return plan.out_height if lr == plan.height else round(plan.scale * lr)

    def out_x(lr: int) -> int:
        return plan.out_width if lr == plan.width else round(plan.scale * lr)

    oy0, ox0 = out_y(wy0), out_x(wx0)
    bands = []
    for index in src.extra_indexes:
        alpha = src.colorinterp[index - 1] == ColorInterp.alpha
        band = ds.read(
            index,
            window=Window(wx0, wy0, wx1 - wx0, wy1 - wy0),
            out_shape=(out_y(wy1) - oy0, out_x(wx1) - ox0),
            resampling=Resampling.nearest if alpha else Resampling.cubic,
        )
        bands.append(band[out_y(ly0) - oy0 : out_y(ly1) - oy0, out_x(lx0) - ox0 : out_x(lx1) - ox0])
    return np.stack(bands)


def scene_files(src_dir: Path) -> list[Path]:
    """The .tif/.tiff files of a folder (not recursive), sorted."""
    return sorted(p for p in src_dir.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


def upscale_folder(
    src_dir: str | Path,
    dst_dir: str | Path,
    urls: list[str],
    options: SceneOptions | None = None,
    client_factory: Callable[[str], Upscaler] | None = None,
    on_done: Callable[[SceneReport], None] | None = None,
    tiling: Tiling | None = None,
) -> list[SceneReport]:
    """Every .tif/.tiff of ``src_dir`` into ``dst_dir`` under the same name; outputs that already exist
    (and have no unfinished ``.parts``) are skipped unless ``options.fresh``."""
    options = options or SceneOptions()
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    options.check()
    files = scene_files(src_dir)
    if not files:
        raise SceneInputError(f"{src_dir}: no .tif/.tiff files")
    if src_dir.resolve() == dst_dir.resolve():
        raise SceneParamError("OUT_DIR must differ from IN_DIR (outputs keep the input names)")
    tiling = tiling or server_tiling(urls, options)
    for path in files:  # every file readable and plannable before any heavy work
        src = SceneSource.open(path)
        plan_chunks(src.height, src.width, options.scale, tiling, options.chunk, options.overlap)
    dst_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for path in files:
        dst = dst_dir / path.name
        if dst.exists() and not parts_dir(dst).exists() and not options.fresh:
            continue
        report = upscale_scene(path, dst, urls, options, client_factory, tiling)
        reports.append(report)
        if on_done:
            on_done(report)
    return reports
