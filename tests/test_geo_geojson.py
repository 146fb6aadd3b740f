"""GeoJSON of detections (issue 27): pixel polygons through the affine transform, to lon / lat or the raster's CRS;
checked against hand-computed points and an independent UTM inverse (Krueger's series), RFC 7946 structure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _geotiff import UTM33N, check_feature_collection, utm_to_lonlat

from sl_detr_hf.geo import detections_to_geojson, pixel_to_map, write_geojson
from sl_detr_hf.rotated_boxes import rbox_to_poly

pytest.importorskip("rasterio")
from affine import Affine  # rasterio's dependency

RBOXES = [(30.0, 40.0, 24.0, 10.0, 0.3), (100.5, 7.25, 40.0, 12.0, -1.2), (0.0, 0.0, 8.0, 8.0, 0.0)]


def detections(with_polygon: bool = True) -> list[dict]:
    polygons = rbox_to_poly(torch.tensor(RBOXES, dtype=torch.float64)).reshape(-1, 4, 2).tolist()
    out = []
    for k, (box, polygon) in enumerate(zip(RBOXES, polygons)):
        det = {"score": 0.9 - 0.1 * k, "label": ("plane", "ship")[k % 2],
               "rbox": dict(zip(("cx", "cy", "w", "h", "theta"), box))}
        if with_polygon:
            det["polygon"] = polygon
        out.append(det)
    return out


def test_pixel_to_map_hand_computed():
    transform = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)
    assert pixel_to_map(np.array([[3.0, 4.0], [0.0, 0.0]]), transform).tolist() == [
        [400001.5, 5199998.0], [400000.0, 5200000.0]]
    sheared = (2.0, 0.5, 10.0, -0.25, -3.0, 20.0)  # b and d used: (2*3 + 0.5*4 + 10, -0.25*3 - 3*4 + 20)
    assert pixel_to_map([[3.0, 4.0]], sheared).tolist() == [[18.0, 7.25]]


def test_utm_reference_on_hand_known_points():
    lon, lat = utm_to_lonlat(np.array([500000.0, 500000.0]), np.array([0.0, 5000000.0]), zone=33)
    assert lon.tolist() == pytest.approx([15.0, 15.0], abs=1e-12)  # the zone's central meridian
    assert lat[0] == pytest.approx(0.0, abs=1e-12)
    assert lat[1] == pytest.approx(45.153477183, abs=1e-8)  # the meridian arc of 5,000 km / 0.9996 on WGS84


@pytest.mark.parametrize("transform", [
    Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0),  # north up, 0.5 m pixels
    Affine.translation(612345.0, 4800000.0) @ Affine.rotation(30.0) @ Affine.scale(0.3, -0.3),  # rotated scene
    Affine(0.5, 0.0, 400000.0, 0.0, 0.5, 5100000.0),  # south up (y grows with the row): the on-screen order holds
])
def test_corners_in_lon_lat_match_the_transform_and_utm_inverse(transform):
    dets = detections()
    collection = detections_to_geojson(dets, transform, UTM33N, source="/data/scene.tif")
    check_feature_collection(collection)
    assert "crs" not in collection  # RFC 7946: lon / lat in WGS84, no crs member
    assert len(collection["features"]) == len(dets)
    for det, feature in zip(dets, collection["features"]):
        pixel = np.asarray(det["polygon"])  # (4, 2)
        east = transform.a * pixel[:, 0] + transform.b * pixel[:, 1] + transform.c
        north = transform.d * pixel[:, 0] + transform.e * pixel[:, 1] + transform.f
        lon, lat = utm_to_lonlat(east, north, zone=33)
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        expected = np.stack([lon, lat], axis=1)
        if transform.determinant < 0:  # north up: DOTA's clockwise-on-screen corners are clockwise on the map too
            expected = expected[[0, 3, 2, 1]]  # the same corners, counter-clockwise from the first
        assert np.abs(ring[:4] - expected).max() < 1e-7
        assert feature["properties"] == {"label": det["label"], "score": det["score"], "rbox": det["rbox"],
                                         "source": "scene.tif"}


def test_native_crs_is_named_and_exact():
    transform = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)
    collection = detections_to_geojson(detections(), transform, UTM33N, dst_crs="native")
    check_feature_collection(collection)
    assert collection["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    ring = collection["features"][2]["geometry"]["coordinates"][0]  # the 8 x 8 box at the origin: +-4 px
    assert sorted(map(tuple, ring[:4])) == [(399998.0, 5199998.0), (399998.0, 5200002.0), (400002.0, 5199998.0),
                                            (400002.0, 5200002.0)]
    # DOTA's first corner (top-left: north-west), then counter-clockwise on the map: south-west, south-east, ...
    assert ring == [[399998.0, 5200002.0], [399998.0, 5199998.0], [400002.0, 5199998.0], [400002.0, 5200002.0],
                    [399998.0, 5200002.0]]


def test_other_crs_named_and_projected():
    transform = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)
    collection = detections_to_geojson(detections(), transform, UTM33N, dst_crs="EPSG:3857")
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::3857"
    lon, lat = utm_to_lonlat(np.array([399998.0]), np.array([5200002.0]), zone=33)  # the first corner
    radius = 6378137.0  # spherical web Mercator, by hand
    x, y = radius * math.radians(lon[0]), radius * math.log(math.tan(math.pi / 4 + math.radians(lat[0]) / 2))
    assert collection["features"][2]["geometry"]["coordinates"][0][0] == pytest.approx([x, y], abs=1e-3)


def test_rbox_only_detections_use_the_box_corners():
    transform = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)
    with_polygon = detections_to_geojson(detections(True), transform, UTM33N, dst_crs="native")
    without = detections_to_geojson(detections(False), transform, UTM33N, dst_crs="native")
    assert without == with_polygon


def test_empty_and_bad_inputs(tmp_path):
    transform = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)
    empty = detections_to_geojson([], transform, UTM33N)
    assert empty == {"type": "FeatureCollection", "features": []}
    assert json.loads(write_geojson(empty, tmp_path / "e.geojson").read_text()) == empty
    with pytest.raises(ValueError, match="not a CRS"):
        detections_to_geojson(detections(), transform, "EPSG:999999")
    with pytest.raises(ValueError, match="not a CRS"):
        detections_to_geojson(detections(), transform, UTM33N, dst_crs="no such crs")


def test_written_file_is_one_json_document(tmp_path):
    transform = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)
    collection = detections_to_geojson(detections(), transform, UTM33N, dst_crs="native", source="scene.tif")
    path = write_geojson(collection, tmp_path / "sub" / "scene.geojson")
    text = path.read_text()
    assert json.loads(text) == collection
    assert len(text.splitlines()) == 2 + len(collection["features"])  # one feature per line
