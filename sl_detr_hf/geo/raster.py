"""Rasters read window by window with rasterio: band choice, a per-scene 8-bit scaling rule, nodata.

A `RasterScene` keeps the file open and reads only the window asked for (`read_rgb`), so a 30,000 x 30,000 scene is
never decoded whole; GDAL's block cache is capped at `GDAL_CACHE_MB` while the scene is open.

The rule that turns a scene's bands into the 8-bit RGB the detector takes:

- **bands**: ``bands=(3, 2, 1)`` (1-based, as GDAL numbers them) picks three bands as R, G, B, or one band shown as
  gray; default: the first three bands, or the first band as gray when the raster has fewer than three;
- **scaling**: 8-bit bands are taken as they are; any other type (16-bit, 32-bit, float) is stretched per band and
  per scene, 2nd percentile -> 0 and 98th percentile -> 255, clipped (QGIS's default "cumulative count cut"). The
  percentiles are computed once per scene, over the valid pixels of a sample of about a megapixel, so every tile of
  a scene is scaled alike: the whole raster when it is at most `STRETCH_SAMPLE_SIDE` px a side; else a decimated
  read of that size when the file has overviews (GDAL reads it from one) or up to 4,096 x 4,096 px; else
  `STRETCH_GRID` x `STRETCH_GRID` windows of `STRETCH_WINDOW` px spread evenly over the scene, each inside one of the
  file's blocks (a decimated read of a large file without overviews decompresses every block: a minute for 30,000 x
  30,000 px). A band without a valid pixel in the windows falls back to the decimated read;
- **nodata**: pixels masked by the file (its nodata value, an internal mask or an alpha band; NaN in float bands)
  become 0; a window in which every pixel of the chosen bands is masked reads as ``None``, and the tiled path
  skips it (and counts it).

A raster is *georeferenced* when it has a CRS and a non-identity affine transform (`RasterScene.georeferenced`);
rasters located only by ground control points are not (no affine transform maps their pixels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["GDAL_CACHE_MB", "GEO_EXTRA_HINT", "RASTER_EXTENSIONS", "STRETCH_GRID", "STRETCH_PERCENTILES",
           "STRETCH_SAMPLE_SIDE", "RasterScene", "is_raster_path", "open_raster", "parse_bands", "rasterio_available",
           "tiff_has_georeference"]

RASTER_EXTENSIONS = frozenset({".tif", ".tiff"})
"""Files read through rasterio when it is installed (PIL reads them otherwise, in pixels only)."""

STRETCH_PERCENTILES = (2.0, 98.0)
"""Percentiles mapped to 0 and 255 for bands that are not 8-bit."""

STRETCH_SAMPLE_SIDE = 1024
"""Longest side (px) of the decimated read the percentiles are computed on (see the module docstring)."""

STRETCH_GRID, STRETCH_WINDOW, STRETCH_GRID_ABOVE = 16, 64, 4096**2
"""Without overviews and above ``STRETCH_GRID_ABOVE`` pixels: the percentiles' sample is ``STRETCH_GRID ** 2``
windows of ``STRETCH_WINDOW`` px a side."""

GDAL_CACHE_MB = 128
"""GDAL block cache (MB) while a `RasterScene` reads: a row of 512 px blocks of three bands 30,000 px wide is 88 MB.
GDAL's own default, 5% of the machine's memory, would let the process grow by 1.6 GB on a 32 GB machine."""

GEO_EXTRA_HINT = 'pip install -e ".[geo]"'
"""How to get rasterio (the `geo` extra)."""

# GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory
_GEOTIFF_TAGS = (33550, 33922, 34264, 34735)


def rasterio_available() -> bool:
    """Whether rasterio (the `geo` extra) can be imported."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def is_raster_path(path: str | os.PathLike) -> bool:
    """A path with a TIFF extension (read with rasterio when it is installed)."""
    return Path(path).suffix.lower() in RASTER_EXTENSIONS


def tiff_has_georeference(path: str | os.PathLike) -> bool:
    """Whether a TIFF carries GeoTIFF tags, read with PIL from the header alone (no rasterio needed)."""
    try:
        with Image.open(path) as image:
            tags = getattr(image, "tag_v2", None)
            return tags is not None and any(tag in tags for tag in _GEOTIFF_TAGS)
    except Exception:  # not readable by PIL: the caller reports the file when it reads it
        return False


def parse_bands(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"3,2,1"`` / ``(3, 2, 1)`` / ``"1"`` -> a tuple of 1-based band numbers (``None`` stays ``None``).

    Raises:
        ValueError: not 1 or 3 positive integers.
    """
    if text is None:
        return None
    try:
        bands = tuple(int(b) for b in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError) as err:
        raise ValueError(f"bands must be 1 or 3 band numbers such as 3,2,1, got {text!r}") from err
    if len(bands) not in (1, 3) or any(b < 1 for b in bands):
        raise ValueError(f"bands must be 1 or 3 band numbers (1-based) such as 3,2,1, got {text!r}")
    return bands


def open_raster(path: str | os.PathLike, bands: Sequence[int] | None = None) -> RasterScene:
    """Open a raster for windowed reading (see `RasterScene`).

    Raises:
        ImportError: rasterio is not installed (the message says how to install it).
        ValueError: the file cannot be read, or ``bands`` names a band the file lacks.
    """
    return RasterScene(path, bands=bands)


class RasterScene:
    """An open raster read window by window as 8-bit RGB (the rule of the module docstring).

    Attributes:
        path, width, height, count (bands in the file), bands (the 1-based bands read), dtype, transform
        (``affine.Affine``), crs (rasterio ``CRS`` or ``None``), georeferenced, stretch (``(C, 2)`` float64
        low / high per chosen band, ``None`` for 8-bit).
    Use as a context manager, or call `close`.
    """

    def __init__(self, path: str | os.PathLike, bands: Sequence[int] | None = None) -> None:
        try:
            import rasterio
        except ImportError as err:
            raise ImportError(f"reading {path} window by window needs rasterio: {GEO_EXTRA_HINT}") from err
        self.path = Path(path)
        self._dataset = None
        try:
            import warnings

            with self._env(), warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._dataset = rasterio.open(self.path)
        except Exception as err:  # RasterioIOError and others, for missing / broken / non-raster files
            raise ValueError(f"cannot read image {self.path}: {err}") from err
        try:
            self._setup(bands)
        except Exception:
            self.close()
            raise

    @staticmethod
    def _env() -> Any:
        """GDAL settings around each call into GDAL (entering one costs about 30 us)."""
        import rasterio

        return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20)

    def _setup(self, bands: Sequence[int] | None) -> None:
        from affine import Affine

        ds = self._dataset
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        chosen = parse_bands(bands)
        if chosen is None:
            chosen = (1, 2, 3) if ds.count >= 3 else (1,)
        if max(chosen) > ds.count:
            raise ValueError(f"{self.path}: bands {','.join(map(str, chosen))} asked for, the file has "
                             f"{ds.count} band(s)")
        self.bands = chosen
        dtypes = {ds.dtypes[b - 1] for b in chosen}
        if len(dtypes) > 1:
            raise ValueError(f"{self.path}: bands {chosen} have different data types {sorted(dtypes)}")
        self.dtype = dtypes.pop()
        self.transform = ds.transform
        self.crs = ds.crs
        self.georeferenced = ds.crs is not None and ds.transform != Affine.identity()
        self.stretch = None if self.dtype == "uint8" else self._percentiles()

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, as PIL's ``Image.size``."""
        return self.width, self.height

    def _percentiles(self) -> np.ndarray:
        """``(C, 2)`` low / high of each chosen band over the valid pixels of the sample (module docstring)."""
        with self._env():
            ds = self._dataset
            if max(self.width, self.height) <= STRETCH_SAMPLE_SIDE:
                samples = [ds.read(self.bands, masked=True)]
            elif ds.overviews(self.bands[0]) or self.width * self.height <= STRETCH_GRID_ABOVE:
                samples = [self._decimated()]
            else:
                samples = [ds.read(self.bands, window=window, masked=True) for window in self._sample_windows()]
            out = _band_percentiles(samples)
            if np.isnan(out).any():  # a band without a valid pixel in the windows: the whole scene, decimated
                out = _band_percentiles([self._decimated()])
        return np.nan_to_num(out)

    def _decimated(self) -> np.ma.MaskedArray:
        """``(C, h, w)`` masked read of at most `STRETCH_SAMPLE_SIDE` px a side (nearest)."""
        scale = STRETCH_SAMPLE_SIDE / max(self.width, self.height)
        shape = (len(self.bands), max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        return self._dataset.read(self.bands, out_shape=shape, masked=True)

    def _sample_windows(self) -> list[Any]:
        """`STRETCH_GRID` x `STRETCH_GRID` windows of `STRETCH_WINDOW` px, evenly spread, each in one block."""
        from rasterio.windows import Window

        block_rows, block_cols = self._dataset.block_shapes[self.bands[0] - 1]
        side = min(STRETCH_WINDOW, self.width, self.height)

        def starts(length: int, block: int) -> list[int]:
            spots = np.linspace(0, length - side, STRETCH_GRID).astype(int)
            return sorted({min(int(v) // block * block, length - side) for v in spots})

        rows, cols = starts(self.height, block_rows), starts(self.width, block_cols)
        return [Window(x, y, side, side) for y in rows for x in cols]

    def read_rgb(self, window: Sequence[int] | None = None, skip_empty: bool = True) -> Image.Image | None:
        """One window as an 8-bit RGB PIL image.

        Args:
            window: ``(x0, y0, x1, y1)`` pixels (default: the whole raster).
            skip_empty: return ``None`` when every pixel of the window is nodata.
        Returns:
            ``(x1 - x0) x (y1 - y0)`` RGB image, or ``None`` (see ``skip_empty``).
        """
        from rasterio.windows import Window

        x0, y0, x1, y1 = (0, 0, self.width, self.height) if window is None else (int(v) for v in window)
        with self._env():
            data = self._dataset.read(self.bands, window=Window(x0, y0, x1 - x0, y1 - y0), masked=True)
        return _to_rgb(data, self.stretch, skip_empty)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if getattr(self, "_dataset", None) is not None:
            self._dataset.close()
            self._dataset = None

    def __enter__(self) -> RasterScene:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"RasterScene({str(self.path)!r}, {self.width} x {self.height}, bands={self.bands}, "
                f"dtype={self.dtype}, crs={self.crs})")


def _band_percentiles(samples: list[np.ma.MaskedArray]) -> np.ndarray:
    """``(C, 2)`` `STRETCH_PERCENTILES` of each band's valid, finite values over ``(C, h, w)`` samples (NaN: none)."""
    out = np.full((samples[0].shape[0], 2), np.nan)
    for k in range(len(out)):
        values = np.concatenate([np.ma.compressed(sample[k]).astype(np.float64) for sample in samples])
        values = values[np.isfinite(values)]
        if values.size:
            out[k] = np.percentile(values, STRETCH_PERCENTILES)
    return out


def _to_rgb(data: np.ma.MaskedArray, stretch: np.ndarray | None, skip_empty: bool) -> Image.Image | None:
    """``(C, h, w)`` masked band values -> ``h x w`` RGB by the module's rule (``None``: all nodata, skipped).

    One band at a time, in place: the only temporary is one float32 band.
    """
    invalid = np.ma.getmaskarray(data)  # (C, h, w)
    values = np.ma.getdata(data)
    channels, height, width = values.shape
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    empty = True
    for k in range(channels):
        band = values[k]
        if stretch is None:
            scaled = band
            bad = invalid[k]
        else:
            low, high = float(stretch[k, 0]), float(stretch[k, 1])
            scaled = band.astype(np.float32)
            bad = invalid[k] | ~np.isfinite(scaled)
            scaled -= np.float32(low)
            scaled *= np.float32(255.0 / max(high - low, 1e-12))
            np.clip(scaled, 0, 255, out=scaled)
            np.rint(scaled, out=scaled)
            scaled[bad] = 0  # NaN included: set before the cast to uint8
        empty &= bool(bad.all())
        target = rgb[..., k] if channels == 3 else rgb[..., 0]
        target[...] = scaled
        target[bad] = 0
    if skip_empty and empty:
        return None
    if channels == 1:
        rgb[..., 1] = rgb[..., 0]
        rgb[..., 2] = rgb[..., 0]
    return Image.fromarray(rgb)
