"""`sl-detr predict` on GeoTIFFs (issue 27): GeoJSON beside predictions.json, its corners = the pixel polygons through
the transform (1e-7 degrees), the raster's CRS on request, one line for a raster without a georeference, and the PIL
path with a one-line hint when rasterio is missing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from _geotiff import check_feature_collection, utm_to_lonlat, write_geotiff
from _tiny_sl_detr import save_tiny_folder
from PIL import Image

from sl_detr_hf.commands.predict import main
from sl_detr_hf.geo import open_raster

pytest.importorskip("rasterio")
from affine import Affine  # rasterio's dependency

TRANSFORM = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)
GEO_HINT = 'pip install -e ".[geo]"'


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_folder(tmp_path_factory.mktemp("model"))


def scene(height: int = 150, width: int = 200, seed: int = 0) -> np.ndarray:
    """4 bands of 16 bits with a nodata (0) border."""
    data = np.random.default_rng(seed).integers(200, 9000, (4, height, width)).astype(np.uint16)
    data[:, :12] = 0
    return data


def run(inputs, model_dir, out, *extra) -> int:
    return main([*map(str, inputs), "--model", str(model_dir), "--output-dir", str(out), "--device", "cpu",
                 "--threshold", "0", *extra])


def test_geotiff_gets_geojson_matching_the_pixel_polygons(model_dir, tmp_path, capsys):
    path = write_geotiff(tmp_path / "scene.tif", scene(), TRANSFORM)
    out = tmp_path / "out"
    assert run([path], model_dir, out, "--tile", "96", "--overlap", "24", "--bands", "3,2,1") == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "predictions.json").read_text())[0]
    assert record["geojson"] == str(out / "scene.geojson") and f"on the map (EPSG:4326): {out}" in printed
    assert (record["width"], record["height"], record["tiles"], record["nodata_tiles_skipped"]) == (200, 150, 6, 0)
    assert (out / "scene.png").is_file()
    collection = json.loads((out / "scene.geojson").read_text())
    check_feature_collection(collection)
    assert "crs" not in collection and len(collection["features"]) == len(record["detections"]) > 0
    for det, feature in zip(record["detections"], collection["features"]):
        pixel = np.asarray(det["polygon"])
        lon, lat = utm_to_lonlat(400000.0 + 0.5 * pixel[:, 0], 5200000.0 - 0.5 * pixel[:, 1], zone=33)
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert np.abs(ring[:4] - np.stack([lon, lat], 1)[[0, 3, 2, 1]]).max() < 1e-7
        assert feature["properties"] == {"label": det["label"], "score": det["score"], "rbox": det["rbox"],
                                         "source": "scene.tif"}


def test_native_crs_and_untiled_geotiff(model_dir, tmp_path):
    path = write_geotiff(tmp_path / "scene.tif", scene(60, 80), TRANSFORM)
    out = tmp_path / "out"
    assert run([path], model_dir, out, "--geojson-crs", "native", "--no-draw") == 0
    record = json.loads((out / "predictions.json").read_text())[0]
    assert "tiles" not in record  # untiled: the raster read whole, by the same rule
    collection = json.loads((out / "scene.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    for det, feature in zip(record["detections"], collection["features"], strict=True):
        pixel = np.asarray(det["polygon"])[[0, 3, 2, 1]]
        expected = np.stack([400000.0 + 0.5 * pixel[:, 0], 5200000.0 - 0.5 * pixel[:, 1]], 1)
        assert np.abs(np.asarray(feature["geometry"]["coordinates"][0][:4]) - expected).max() < 1e-6


def test_raster_without_georeference_gets_one_line(model_dir, tmp_path, capsys):
    path = write_geotiff(tmp_path / "plain.tif", scene(60, 80), transform=None, crs=None)
    out = tmp_path / "out"
    assert run([path], model_dir, out, "--no-draw") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "plain.tif" in line]
    assert lines == ["plain.tif: no georeference (no CRS): no GeoJSON, pixels only"]
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json"]


def test_all_nodata_tiles_are_skipped_and_counted(model_dir, tmp_path, capsys):
    data = scene()
    data[:, :, :100] = 0  # tiles with x1 <= 100 are all nodata: x0 in {0} for tile 96 (windows x 0, 72, 104)
    path = write_geotiff(tmp_path / "scene.tif", data, TRANSFORM)
    out = tmp_path / "out"
    assert run([path], model_dir, out, "--tile", "96", "--overlap", "24", "--no-draw") == 0
    record = json.loads((out / "predictions.json").read_text())[0]
    assert (record["tiles"], record["nodata_tiles_skipped"]) == (6, 2)
    assert "scene.tif: 2 of 6 tiles all nodata (skipped)" in capsys.readouterr().out
    assert all(max(x for x, _ in d["polygon"]) > 72 for d in record["detections"])  # none from the skipped tiles


def test_without_rasterio_pixels_and_one_line(model_dir, tmp_path, capsys, monkeypatch):
    rgb = np.random.default_rng(1).integers(0, 256, (3, 60, 80)).astype(np.uint8)
    geotiff = write_geotiff(tmp_path / "rgb.tif", rgb, TRANSFORM, nodata=None)
    sixteen = write_geotiff(tmp_path / "s16.tif", scene(60, 80), TRANSFORM)
    monkeypatch.setitem(sys.modules, "rasterio", None)  # as if the geo extra were not installed
    out = tmp_path / "out"
    assert run([geotiff], model_dir, out, "--no-draw") == 0
    printed = capsys.readouterr().out
    assert f"rgb.tif: georeferenced, predicted in pixels only; {GEO_HINT} (rasterio) writes its GeoJSON" in printed
    record = json.loads((out / "predictions.json").read_text())[0]
    assert len(record["detections"]) > 0 and "geojson" not in record and not (out / "rgb.geojson").exists()
    with pytest.raises(SystemExit):  # PIL cannot read 4 bands of 16 bits: the error says what reads them
        run([sixteen], model_dir, out)
    assert GEO_HINT in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run([geotiff], model_dir, out, "--bands", "3,2,1")
    assert f"--bands needs rasterio: {GEO_HINT}" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--bands", "1,2"], "--bands: bands must be 1 or 3 band numbers"),
    (["--bands", "5"], "scene.tif: bands 5 asked for, the file has 4 band(s)"),
    (["--geojson-crs", "EPSG:999999"], "--geojson-crs EPSG:999999: not a CRS"),
])
def test_bad_geo_arguments_exit_with_a_message(model_dir, tmp_path, capsys, extra, message):
    path = write_geotiff(tmp_path / "scene.tif", scene(40, 50), TRANSFORM)
    with pytest.raises(SystemExit) as exit_info:
        run([path], model_dir, tmp_path / "out", *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tiled_raster_png_is_assembled_from_the_tiles(model_dir, tmp_path, monkeypatch):
    """No second read of the scene: the PNG is the tiles pasted (scale 1: exactly the scaled scene, nodata black)."""
    from sl_detr_hf import inference

    data = scene(150, 200, seed=2)
    data[:, :, :100] = 0  # two all-nodata tiles, skipped: black in the PNG
    path = write_geotiff(tmp_path / "scene.tif", data, TRANSFORM)
    out = tmp_path / "out"
    assert run([path], model_dir, out, "--tile", "96", "--overlap", "24", "--threshold", "1") == 0  # nothing drawn
    with open_raster(path) as raster:
        expected = np.asarray(raster.read_rgb(skip_empty=False))
    assert (np.asarray(Image.open(out / "scene.png")) == expected).all()
    monkeypatch.setattr(inference, "PREVIEW_MAX_SIDE", 100)  # a scene larger than the preview: tiles shrunk, pasted
    assert run([path], model_dir, out, "--tile", "96", "--overlap", "24", "--threshold", "1") == 0
    small = np.asarray(Image.open(out / "scene.png")).astype(int)
    assert small.shape == (75, 100, 3)
    reference = np.asarray(Image.fromarray(expected).resize((100, 75), Image.Resampling.BOX)).astype(int)
    assert np.abs(small - reference)[:, 52:].mean() < 3  # the tiles read (x >= 104 px in the scene)
    assert not small[:, :36].any()  # the skipped tiles (x < 72 px) stay black
