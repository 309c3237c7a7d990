"""Georeferenced raster helpers for scene mode (rasterio + numpy, no torch).

What goes through the model is always uint8 RGB; this module maps a scene's bands and dtype
to that and back:

* bands: 1 band is replicated to RGB and the output is the mean of the three; 3 or more bands:
  bands 1-3 are RGB, any further band (e.g. NIR) is resampled (cubic; nearest for an alpha band).
  2 bands are refused.
* dtype: uint8 goes through as is; any other dtype is stretched linearly per RGB band from
  [lo, hi] (the 2-98 % percentiles of a decimated read, or a given range) to 0..255, and the
  model's output is mapped back with the inverse, so the output keeps the input dtype. Values
  outside [lo, hi] saturate; the output has 256 levels per band between lo and hi.
* nodata: pixels equal to the nodata value (in every band) are filled from their valid
  neighbours before they reach the model and are nodata again in the output (nearest
  neighbour of the LR mask); a valid output value that happens to equal nodata is moved by one.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.fill import fillnodata

PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_SIDE = 1024
"""Longest side of the decimated read the percentiles are computed on."""
FILL_SEARCH_PX = 64
"""How far (LR pixels) nodata holes are filled from valid neighbours; the rest gets the mean."""


class SceneInputError(ValueError):
    """The input scene cannot go through scene mode (the message says why)."""


def scaled_transform(transform: Affine, scale: float) -> Affine:
    """The transform of the same scene on a grid ``scale`` times finer: origin kept, pixel size / scale."""
    a, b, c, d, e, f = transform[:6]
    return Affine(a / scale, b / scale, c, d / scale, e / scale, f)  # = transform @ Affine.scale(1 / scale)


@dataclass(frozen=True)
class Stretch:
    """Linear map of the RGB bands from [lo, hi] (per band) to 0..255 and back."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def to_uint8(self, bands: np.ndarray) -> np.ndarray:
        """[3, h, w] any dtype -> uint8."""
        lo = np.asarray(self.lo, dtype=np.float64)[:, None, None]
        hi = np.asarray(self.hi, dtype=np.float64)[:, None, None]
        scaled = np.nan_to_num((bands.astype(np.float64) - lo) * (255.0 / (hi - lo)), nan=0.0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def from_uint8(self, bands: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """[3, h, w] uint8 -> ``dtype`` (rounded and clipped to its range for integer dtypes)."""
        lo = np.asarray(self.lo, dtype=np.float64)[:, None, None]
        hi = np.asarray(self.hi, dtype=np.float64)[:, None, None]
        values = lo + bands.astype(np.float64) * ((hi - lo) / 255.0)
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(dtype)
        return values.astype(dtype)

    def describe(self) -> str:
        return ", ".join(f"band {i + 1}: [{lo:g}, {hi:g}]" for i, (lo, hi) in enumerate(zip(self.lo, self.hi)))


def nodata_mask(bands: np.ndarray, nodata: float | None) -> np.ndarray:
    """[C, h, w] -> bool [h, w], True where every band is nodata."""
    if nodata is None:
        return np.zeros(bands.shape[1:], dtype=bool)
    if math.isnan(nodata):
        return np.isnan(bands).all(axis=0)
    return (bands == nodata).all(axis=0)


@dataclass(frozen=True)
class SceneSource:
    """What scene mode needs to know about an input raster."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: object
    transform: Affine
    nodata: float | None
    colorinterp: tuple[ColorInterp, ...]
    area_or_point: str | None

    @property
    def rgb_indexes(self) -> list[int]:
        """1-based bands fed to the model (a grey band three times)."""
        return [1, 1, 1] if self.count == 1 else [1, 2, 3]

    @property
    def extra_indexes(self) -> list[int]:
        """1-based bands resampled beside the model (NIR, alpha, ...)."""
        return list(range(4, self.count + 1))

    @property
    def out_count(self) -> int:
        return self.count

    @classmethod
    def open(cls, path: str | Path) -> SceneSource:
        try:
            with rasterio.open(path) as ds:
                if ds.count == 2:
                    raise SceneInputError(
                        f"{path}: 2-band input is not supported (need 1 grey band, or 3+ bands with RGB first)"
                    )
                if len(set(ds.dtypes)) != 1:
                    raise SceneInputError(f"{path}: bands of different dtypes {ds.dtypes} are not supported")
                if np.dtype(ds.dtypes[0]).kind == "c":
                    raise SceneInputError(f"{path}: complex dtype {ds.dtypes[0]} is not supported")
                return cls(
                    Path(path),
                    ds.width,
                    ds.height,
                    ds.count,
                    ds.dtypes[0],
                    ds.crs,
                    ds.transform,
                    ds.nodata,
                    tuple(ds.colorinterp),
                    ds.tags().get("AREA_OR_POINT"),
                )
        except rasterio.RasterioIOError as exc:
            raise SceneInputError(f"{path}: cannot read it as a raster ({exc})") from None

    def stretch(self, value_range: tuple[float, float] | None = None) -> Stretch | None:
        """None for uint8 without a given range; else the given range or the 2-98 % percentiles."""
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise SceneInputError(f"--range must be two finite numbers LO < HI, got {lo:g} {hi:g}")
            return Stretch((lo,) * 3, (hi,) * 3)
        if self.dtype == "uint8":
            return None
        factor = max(1.0, max(self.width, self.height) / STRETCH_SAMPLE_SIDE)
        shape = (max(1, round(self.height / factor)), max(1, round(self.width / factor)))
        with rasterio.open(self.path) as ds:
            sample = ds.read(self.rgb_indexes, out_shape=(3, *shape), resampling=Resampling.nearest)
        valid = ~nodata_mask(sample, self.nodata) & np.isfinite(sample).all(axis=0)
        if not valid.any():
            raise SceneInputError(f"{self.path}: no valid pixels to compute the stretch from; pass --range LO HI")
        lo, hi = [], []
        for band in sample:
            a, b = np.percentile(band[valid].astype(np.float64), PERCENTILES)
            if not b > a:  # a flat band: any range containing it
                a, b = a - 0.5, a + 0.5
            lo.append(float(a))
            hi.append(float(b))
        return Stretch(tuple(lo), tuple(hi))


def invalid_mask(bands: np.ndarray, nodata: float | None) -> np.ndarray:
    """[C, h, w] (every band of the source) -> bool [h, w], True where the pixel is nodata or not finite."""
    invalid = nodata_mask(bands, nodata)
    if np.issubdtype(bands.dtype, np.floating):
        invalid |= ~np.isfinite(bands).all(axis=0)
    return invalid


def model_input(rgb_bands: np.ndarray, invalid: np.ndarray, stretch: Stretch | None) -> np.ndarray | None:
    """RGB bands [3, h, w] of the source -> uint8 [h, w, 3] for the model (None when nothing is valid).

    Nodata pixels are filled from valid neighbours (GDAL's inverse-distance fill), so the model
    sees no artificial edge; their output is replaced by nodata afterwards."""
    if invalid.all():
        return None
    rgb = stretch.to_uint8(rgb_bands) if stretch is not None else rgb_bands.astype(np.uint8)
    if invalid.any():
        valid = (~invalid).astype(np.uint8)
        filled = []
        for band in rgb:
            band = band.copy()
            band[invalid] = int(round(float(band[~invalid].mean())))  # what the fill does not reach
            filled.append(fillnodata(band, mask=valid, max_search_distance=FILL_SEARCH_PX))
        rgb = np.stack(filled)
    return np.ascontiguousarray(rgb.transpose(1, 2, 0))


def output_profile(src: SceneSource, out_h: int, out_w: int, scale: float, block: int = 512) -> dict:
    """Profile of the intermediate tiled GeoTIFF the output is assembled in."""
    return {
        "driver": "GTiff",
        "width": out_w,
        "height": out_h,
        "count": src.out_count,
        "dtype": src.dtype,
        "crs": src.crs,
        "transform": scaled_transform(src.transform, scale),
        "nodata": src.nodata,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "bigtiff": "if_safer",  # uncompressed: it is written in blocks that do not follow its tiles
        "interleave": "pixel",
    }


def restore_nodata(bands: np.ndarray, invalid: np.ndarray, nodata: float | None) -> np.ndarray:
    """Set nodata where ``invalid`` and move valid values that equal nodata by one step."""
    if nodata is None:
        return bands
    if math.isnan(nodata):
        bands[:, invalid] = np.nan
        return bands
    clash = (bands == nodata) & ~invalid[None]
    if clash.any():
        kind = bands.dtype.kind
        top = np.iinfo(bands.dtype).max if kind in "iu" else np.finfo(bands.dtype).max
        step = 1 if kind in "iu" else max(abs(nodata), 1.0) * 1e-6
        bands[clash] = nodata + step if nodata < top else nodata - step
    bands[:, invalid] = nodata
    return bands


def cog_blocksize(out_h: int, out_w: int) -> int:
    """512 px tiles (GDAL's default), 256 for outputs up to 4096 px so that they still get overviews."""
    return 512 if max(out_h, out_w) > 4096 else 256


def write_cog(assembled: Path, dst: Path, tags: dict[str, str], blocksize: int = 512) -> None:
    """Copy a tiled GeoTIFF into a deflate-compressed Cloud-Optimized GeoTIFF with overviews
    (average resampling, which leaves nodata out)."""
    from rasterio.shutil import copy as rio_copy

    with rasterio.open(assembled, "r+") as ds:
        ds.update_tags(**tags)
    tmp = dst.with_name(dst.name + ".partial")
    rio_copy(
        assembled,
        tmp,
        driver="COG",
        COMPRESS="DEFLATE",
        PREDICTOR="YES",
        BLOCKSIZE=blocksize,
        OVERVIEWS="AUTO",
        OVERVIEW_RESAMPLING="AVERAGE",
        BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",
    )
    shutil.move(tmp, dst)


@dataclass(frozen=True)
class GeoReference:
    """Where an image sits on the ground: its CRS and pixel-to-map transform (rasterio's)."""

    crs: rasterio.crs.CRS | None
    transform: Affine

    def resampled(self, fx: float, fy: float) -> GeoReference:
        """The same ground area on a grid ``fx`` times finer along x and ``fy`` along y."""
        return GeoReference(self.crs, self.transform * Affine.scale(1 / fx, 1 / fy))


def read_georeference(path: str | Path) -> GeoReference | None:
    """The georeference of a GeoTIFF, or None when ``path`` is not a georeferenced raster."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None and ds.transform.is_identity:
                return None
            return GeoReference(ds.crs, ds.transform)
    except rasterio.errors.RasterioIOError:
        return None


def write_georeferenced(path: str | Path, image: np.ndarray, geo: GeoReference) -> None:
    """Write uint8 RGB [H, W, 3] as a deflate-compressed GeoTIFF with ``geo``."""
    height, width = image.shape[:2]
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8"}
    profile.update(crs=geo.crs, transform=geo.transform, compress="deflate", photometric="RGB")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.moveaxis(image, -1, 0))
