"""GeoTIFFs written for the tests (rasterio), an independent UTM -> lon / lat reference, a GeoJSON structure check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

UTM33N = "EPSG:32633"
NODATA = 0


def write_geotiff(path: Path, data: np.ndarray, transform: Any = None, crs: str | None = UTM33N,
                  nodata: float | None = NODATA, tiled: bool = False, block: int = 32) -> Path:
    """Write ``(bands, H, W)`` ``data`` as a GeoTIFF (no georeference when ``transform`` and ``crs`` are None)."""
    import warnings

    import rasterio

    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype.name}
    if transform is not None:
        profile["transform"] = transform
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # on purpose when transform is None
        with rasterio.open(path, "w", **profile) as dataset:
            dataset.write(data)
    return path


def utm_to_lonlat(easting: np.ndarray, northing: np.ndarray, zone: int) -> tuple[np.ndarray, np.ndarray]:
    """Northern-hemisphere UTM on WGS84 -> longitude, latitude (degrees), by Krueger's series to n^6 (sub-mm in the
    zone): a reference independent of PROJ."""
    a, f = 6378137.0, 1 / 298.257223563
    n = f / (2 - f)
    big_a = a / (1 + n) * (1 + n**2 / 4 + n**4 / 64 + n**6 / 256)
    beta = (n / 2 - 2 * n**2 / 3 + 37 * n**3 / 96 - n**4 / 360 - 81 * n**5 / 512,
            n**2 / 48 + n**3 / 15 - 437 * n**4 / 1440 + 46 * n**5 / 105,
            17 * n**3 / 480 - 37 * n**4 / 840 - 209 * n**5 / 4480,
            4397 * n**4 / 161280 - 11 * n**5 / 504,
            4583 * n**5 / 161280)
    delta = (2 * n - 2 * n**2 / 3 - 2 * n**3 + 116 * n**4 / 45 + 26 * n**5 / 45 - 2854 * n**6 / 675,
             7 * n**2 / 3 - 8 * n**3 / 5 - 227 * n**4 / 45 + 2704 * n**5 / 315 + 2323 * n**6 / 945,
             56 * n**3 / 15 - 136 * n**4 / 35 - 1262 * n**5 / 105 + 73814 * n**6 / 2835,
             4279 * n**4 / 630 - 332 * n**5 / 35 - 399572 * n**6 / 14175,
             4174 * n**5 / 315 - 144838 * n**6 / 6237,
             601676 * n**6 / 22275)
    k0 = 0.9996
    xi = np.asarray(northing, dtype=np.float64) / (k0 * big_a)
    eta = (np.asarray(easting, dtype=np.float64) - 500000.0) / (k0 * big_a)
    xi_p, eta_p = xi.copy(), eta.copy()
    for j, b in enumerate(beta, start=1):
        xi_p -= b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p -= b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))
    lat = chi + sum(d * np.sin(2 * j * chi) for j, d in enumerate(delta, start=1))
    lon = math.radians(6 * zone - 183) + np.arctan2(np.sinh(eta_p), np.cos(xi_p))
    return np.degrees(lon), np.degrees(lat)


def check_feature_collection(collection: dict) -> None:
    """Assert RFC 7946 structure: a FeatureCollection of Polygon features with closed, counter-clockwise rings."""
    assert collection["type"] == "FeatureCollection" and isinstance(collection["features"], list)
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and isinstance(feature["properties"], dict)
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon" and len(geometry["coordinates"]) == 1
        ring = np.asarray(geometry["coordinates"][0], dtype=np.float64)
        assert ring.shape == (5, 2) and np.isfinite(ring).all()
        assert (ring[0] == ring[-1]).all()  # closed
        x, y = ring[:, 0], ring[:, 1]
        assert (x[:-1] * y[1:] - x[1:] * y[:-1]).sum() > 0  # counter-clockwise (the right-hand rule)
