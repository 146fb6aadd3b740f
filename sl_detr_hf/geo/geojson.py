"""Detections on a map: pixel polygons through a raster's affine transform, as a GeoJSON FeatureCollection.

Pixel coordinates are those of the pipeline (``x`` right, ``y`` down, ``(0, 0)`` the top-left corner of the top-left
pixel), which is also where a GeoTIFF's affine transform puts pixel ``(col, row) = (0, 0)``; a corner ``(x, y)``
maps to ``(a x + b y + c, d x + e y + f)`` in the raster's CRS (``Affine(a, b, c, d, e, f)``, rasterio's order).

The output follows RFC 7946: one ``Polygon`` per detection, its ring closed (5 positions, the last the first) and
counter-clockwise (the right-hand rule; it starts at the detection's first ``polygon`` corner); longitude / latitude
in EPSG:4326 by default, without a ``"crs"`` member. Asked for another CRS (``dst_crs="native"``: the raster's own),
the coordinates are in that CRS and the file names it in a ``"crs"`` member (``{"type": "name", "properties":
{"name": "urn:ogc:def:crs:EPSG::32633"}}``, the 2008 GeoJSON form that GDAL / QGIS read). Properties: ``label``,
``score``, ``rbox`` (the pixel box ``cx, cy, w, h, theta``) and ``source`` (the raster's file name).

Coordinates keep full double precision (RFC 7946's suggested 6 decimals would round lon / lat to about 10 cm).
Polygons crossing the antimeridian are not split.

Converting between CRSs needs rasterio (``pip install -e ".[geo]"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WGS84", "detections_to_geojson", "pixel_to_map", "write_geojson"]

WGS84 = "EPSG:4326"
"""The CRS of RFC 7946 GeoJSON: longitude, latitude in degrees."""

RBOX_KEYS = ("cx", "cy", "w", "h", "theta")
_GEO_HINT = 'pip install -e ".[geo]"'


def pixel_to_map(points: np.ndarray, transform: Any) -> np.ndarray:
    """Pixel ``(x, y)`` points through an affine transform.

    Args:
        points: ``(..., 2)`` pixel coordinates.
        transform: an ``affine.Affine`` (rasterio's ``dataset.transform``) or its 6 numbers ``(a, b, c, d, e, f)``.
    Returns:
        ``(..., 2)`` float64 coordinates in the raster's CRS.
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    points = np.asarray(points, dtype=np.float64)
    x, y = points[..., 0], points[..., 1]
    return np.stack((a * x + b * y + c, d * x + e * y + f), axis=-1)


def _polygons(detections: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``(N, 4, 2)`` pixel corners: each detection's ``polygon``, or the corners of its ``rbox``."""
    if not detections:
        return np.zeros((0, 4, 2))
    if all(d.get("polygon") is not None for d in detections):
        polygons = np.asarray([d["polygon"] for d in detections], dtype=np.float64)
        if polygons.shape[1:] != (4, 2):
            raise ValueError(f"a detection's `polygon` must be 4 [x, y] corners, got shape {polygons.shape[1:]}")
        return polygons
    import torch

    from ..rotated_boxes import rbox_to_poly

    rboxes = torch.tensor([[float(d["rbox"][k]) for k in RBOX_KEYS] for d in detections], dtype=torch.float64)
    return rbox_to_poly(rboxes).reshape(-1, 4, 2).numpy()


def _crs_member(crs: Any) -> dict[str, Any]:
    """The ``"crs"`` member naming ``crs``: an OGC URN when it has an EPSG code, else its WKT."""
    code = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{code}" if code is not None else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def _as_crs(crs: Any, what: str) -> Any:
    try:
        from rasterio.crs import CRS
    except ImportError as err:
        raise ImportError(f"converting map coordinates needs rasterio: {_GEO_HINT}") from err
    try:
        return CRS.from_user_input(crs)
    except Exception as err:  # rasterio raises CRSError for unknown codes and bad WKT
        raise ValueError(f"{what}: not a CRS rasterio knows: {crs!r} ({err})") from err


def detections_to_geojson(detections: Sequence[Mapping[str, Any]], transform: Any, crs: Any,
                          dst_crs: Any = WGS84, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection with one Polygon per detection (see the module docstring).

    Args:
        detections: the pipeline's detection dicts (``score``, ``label``, ``rbox``; ``polygon`` if present, else
            the ``rbox`` corners), in the raster's pixels.
        transform: the raster's pixel -> CRS affine transform (``dataset.transform``, or ``(a, b, c, d, e, f)``).
        crs: the raster's CRS (a rasterio ``CRS``, ``"EPSG:32633"``, WKT, ...).
        dst_crs: the CRS of the coordinates written: ``"EPSG:4326"`` (default, RFC 7946 lon / lat), ``"native"``
            (``crs`` itself) or any CRS rasterio reads.
        source: the raster's path; its file name goes in each feature's ``source`` property.
    Returns:
        ``{"type": "FeatureCollection", "features": [...]}`` (plus ``"crs"`` unless ``dst_crs`` is EPSG:4326).
    Raises:
        ImportError: a conversion between CRSs without rasterio installed.
        ValueError: an unknown CRS, or a transform / detection that maps to a non-finite coordinate.
    """
    polygons = pixel_to_map(_polygons(detections), transform)  # (N, 4, 2) in the raster's CRS
    native = isinstance(dst_crs, str) and dst_crs.lower() == "native"
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if native:
        try:
            collection["crs"] = _crs_member(_as_crs(crs, "crs"))
        except ImportError:  # no rasterio: name the CRS as given when it is a plain "EPSG:n" string
            if not (isinstance(crs, str) and crs.upper().startswith("EPSG:")):
                raise
            collection["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{crs[5:]}"}}
    else:
        src, dst = _as_crs(crs, "crs"), _as_crs(dst_crs, "dst_crs")
        if src != dst and len(polygons):
            from rasterio.warp import transform as warp

            xs, ys = warp(src, dst, polygons[..., 0].ravel().tolist(), polygons[..., 1].ravel().tolist())
            polygons = np.stack((np.asarray(xs), np.asarray(ys)), axis=-1).reshape(polygons.shape)
        if dst.to_epsg() != 4326:
            collection["crs"] = _crs_member(dst)
    if not np.isfinite(polygons).all():
        raise ValueError(f"detections map to non-finite coordinates (transform {tuple(transform)[:6]}, crs {crs})")
    x, y = polygons[..., 0], polygons[..., 1]
    area2 = (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(1)  # twice the signed area, (N,)
    # counter-clockwise rings, from the same first corner (a north-up raster turns DOTA's on-screen clockwise order)
    polygons = np.where((area2 < 0)[:, None, None], polygons[:, [0, 3, 2, 1]], polygons)
    name = None if source is None else Path(source).name
    features = []
    for det, ring in zip(detections, polygons.tolist()):
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            "properties": {"label": det["label"], "score": float(det["score"]),
                           "rbox": {k: float(det["rbox"][k]) for k in RBOX_KEYS}, "source": name},
        })
    collection["features"] = features
    return collection


def write_geojson(collection: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a FeatureCollection, one feature per line (readable, diff-friendly); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in collection.items() if k != "features"}
    lines = [json.dumps(feature) for feature in collection.get("features", [])]
    body = ",\n".join(lines)
    text = json.dumps(head)[:-1] + ', "features": [\n' + body + ("\n" if lines else "") + "]}\n"
    path.write_text(text, encoding="utf-8")
    return path
