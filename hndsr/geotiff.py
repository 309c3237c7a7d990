"""GeoTIFF georeferencing: read it from an input and write it, rescaled, with an SR result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

PIXEL_SCALE = 33550
TIEPOINT = 33922
TRANSFORMATION = 34264
GEO_KEYS = 34735
GEO_DOUBLES = 34736
GEO_ASCII = 34737
_TYPES = {PIXEL_SCALE: 12, TIEPOINT: 12, TRANSFORMATION: 12, GEO_KEYS: 3, GEO_DOUBLES: 12, GEO_ASCII: 2}


@dataclass
class GeoReference:
    """The GeoTIFF tags of an image, keyed by tag code."""

    tags: dict[int, tuple | str]

    def scaled(self, fx: float, fy: float) -> GeoReference:
        """Georeference of the same scene resampled by ``fx`` (columns) and ``fy`` (rows)."""
        tags = dict(self.tags)
        if PIXEL_SCALE in tags:
            sx, sy, *rest = tags[PIXEL_SCALE]
            tags[PIXEL_SCALE] = (sx / fx, sy / fy, *rest)
        if TIEPOINT in tags:
            tie = list(tags[TIEPOINT])
            for i in range(0, len(tie), 6):  # raster (i, j) of each tiepoint moves with the grid
                tie[i], tie[i + 1] = tie[i] * fx, tie[i + 1] * fy
            tags[TIEPOINT] = tuple(tie)
        if TRANSFORMATION in tags:
            m = np.array(tags[TRANSFORMATION], dtype=float).reshape(4, 4)
            m[:, 0] /= fx
            m[:, 1] /= fy
            tags[TRANSFORMATION] = tuple(m.ravel())
        return GeoReference(tags)


def read_georeference(path: str | Path) -> GeoReference | None:
    """The GeoTIFF tags of ``path``, or None when it is not a georeferenced TIFF."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = {code: page.tags[code].value for code in _TYPES if code in page.tags}
    except (tifffile.TiffFileError, OSError):
        return None
    if PIXEL_SCALE not in tags and TRANSFORMATION not in tags:
        return None
    return GeoReference(tags)


def write_geotiff(path: str | Path, image: np.ndarray, geo: GeoReference) -> None:
    """Write uint8 RGB with the given georeference (deflate-compressed)."""
    extratags = []
    for code, value in sorted(geo.tags.items()):
        if isinstance(value, str):
            extratags.append((code, 2, 0, value, True))
        else:
            extratags.append((code, _TYPES[code], len(value), tuple(value), True))
    tifffile.imwrite(path, image, photometric="rgb", compression="adobe_deflate", extratags=extratags)
