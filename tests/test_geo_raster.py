"""Rasters read window by window (issue 27): band choice, the per-scene 2-98 percentile stretch, nodata, the reads
the tiled path makes (windows, never the whole scene)."""

from __future__ import annotations

import numpy as np
import pytest
from _geotiff import write_geotiff

from sl_detr_hf.geo import open_raster, parse_bands, tiff_has_georeference
from sl_detr_hf.tiling import open_scene, predict_scene, tile_windows

pytest.importorskip("rasterio")
from affine import Affine  # rasterio's dependency

TRANSFORM = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5200000.0)


def scene_uint16(height: int = 120, width: int = 150, seed: int = 0) -> np.ndarray:
    """4 bands of 16 bits, each its own range, a nodata (0) border of 10 px on the left."""
    rng = np.random.default_rng(seed)
    data = np.stack([rng.integers(100 * (b + 1), 1000 * (b + 1) + 3000, (height, width)) for b in range(4)])
    data[:, :, :10] = 0
    return data.astype(np.uint16)


def reference_rgb(data: np.ndarray, bands: tuple[int, ...], window: tuple[int, int, int, int]) -> np.ndarray:
    """The documented rule by hand: per band, the 2nd / 98th percentile of the scene's valid pixels -> 0 / 255."""
    x0, y0, x1, y1 = window
    out = []
    for b in bands:
        band = data[b - 1].astype(np.float64)
        low, high = np.percentile(band[band != 0], [2, 98])
        part = band[y0:y1, x0:x1]
        scaled = np.rint(np.clip((part - low) * 255 / (high - low), 0, 255))
        out.append(np.where(part == 0, 0, scaled))
    if len(out) == 1:
        out *= 3
    return np.stack(out, axis=-1).astype(np.uint8)


def test_parse_bands():
    assert parse_bands("3,2,1") == (3, 2, 1) and parse_bands("4") == (4,) and parse_bands([1, 2, 3]) == (1, 2, 3)
    assert parse_bands(None) is None
    for bad in ("1,2", "0,1,2", "a,b,c", "1,2,3,4", ""):
        with pytest.raises(ValueError, match="bands"):
            parse_bands(bad)


def test_stretch_bands_and_nodata_follow_the_documented_rule(tmp_path):
    data = scene_uint16()
    path = write_geotiff(tmp_path / "s.tif", data, TRANSFORM)
    with open_raster(path) as raster:
        assert (raster.width, raster.height, raster.count, raster.bands) == (150, 120, 4, (1, 2, 3))
        assert raster.georeferenced and raster.crs.to_epsg() == 32633 and raster.transform == TRANSFORM
        for window in ((0, 0, 150, 120), (5, 7, 69, 100), (100, 60, 150, 120)):
            got = np.asarray(raster.read_rgb(window))
            assert got.shape == (window[3] - window[1], window[2] - window[0], 3)
            assert np.abs(got.astype(int) - reference_rgb(data, (1, 2, 3), window)).max() <= 1  # float32 rounding
        left = np.asarray(raster.read_rgb((0, 0, 10, 120), skip_empty=False))
        assert not left.any()  # nodata -> 0
        assert raster.read_rgb((0, 0, 10, 120)) is None  # all nodata: skipped
    with open_raster(path, bands=(3, 2, 1)) as raster:
        window = (20, 30, 90, 80)
        assert np.abs(np.asarray(raster.read_rgb(window)).astype(int)
                      - reference_rgb(data, (3, 2, 1), window)).max() <= 1
    with open_raster(path, bands="4") as raster:  # one band as gray
        got = np.asarray(raster.read_rgb((20, 30, 90, 80)))
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
        assert np.abs(got.astype(int) - reference_rgb(data, (4,), (20, 30, 90, 80))).max() <= 1


def test_same_value_same_colour_in_every_tile(tmp_path):
    """The stretch is per scene, not per tile: a dim tile stays dim."""
    data = np.full((3, 100, 200), 1000, dtype=np.uint16)
    data[:, :, 100:] = 5000  # a bright half
    data[:, 40, 20] = 3000
    data[:, 40, 150] = 3000
    with open_raster(write_geotiff(tmp_path / "s.tif", data, TRANSFORM)) as raster:
        left, right = np.asarray(raster.read_rgb((0, 0, 100, 100))), np.asarray(raster.read_rgb((100, 0, 200, 100)))
    assert left[40, 20].tolist() == right[40, 50].tolist() == [128, 128, 128]  # (3000 - 1000) / 4000 * 255
    assert (left[0, 0] == 0).all() and (right[0, 0] == 255).all()


def test_uint8_as_is_float_nan_as_nodata_and_plain_tiff(tmp_path):
    rng = np.random.default_rng(1)
    data8 = rng.integers(0, 256, (3, 40, 50)).astype(np.uint8)
    with open_raster(write_geotiff(tmp_path / "u8.tif", data8, TRANSFORM, nodata=None)) as raster:
        assert raster.stretch is None
        assert (np.asarray(raster.read_rgb()) == data8.transpose(1, 2, 0)).all()
    floats = rng.normal(0.2, 0.05, (1, 40, 50)).astype(np.float32)
    floats[0, :, :25] = np.nan
    with open_raster(write_geotiff(tmp_path / "f.tif", floats, TRANSFORM, nodata=None)) as raster:
        low, high = raster.stretch[0]
        valid = floats[0, :, 25:]
        assert (low, high) == pytest.approx(tuple(np.percentile(valid, [2, 98])), rel=1e-6)
        assert raster.read_rgb((0, 0, 25, 40)) is None  # NaN is nodata
        assert np.asarray(raster.read_rgb((25, 0, 50, 40))).any()
    plain = write_geotiff(tmp_path / "plain.tif", data8, transform=None, crs=None, nodata=None)
    with open_raster(plain) as raster:
        assert not raster.georeferenced
    assert tiff_has_georeference(tmp_path / "u8.tif") and not tiff_has_georeference(plain)


def test_bad_files_and_bands_are_named(tmp_path):
    path = write_geotiff(tmp_path / "s.tif", scene_uint16(40, 50), TRANSFORM)
    with pytest.raises(ValueError, match=r"s\.tif: bands 5 asked for, the file has 4 band\(s\)"):
        open_raster(path, bands=(5,))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.tif"):
        open_raster(tmp_path / "broken.tif")
    with pytest.raises(ValueError, match=r"cannot read image .*missing\.tif"):
        open_raster(tmp_path / "missing.tif")


class ReadSpy:
    """Wraps a rasterio dataset; records the shape of every read."""

    def __init__(self, dataset):
        self.dataset, self.reads, self.calls = dataset, [], []

    def read(self, *args, **kwargs):
        out = self.dataset.read(*args, **kwargs)
        self.reads.append(out.shape)
        self.calls.append(kwargs.get("window"))
        return out

    def __getattr__(self, name):
        return getattr(self.dataset, name)


def test_tiled_path_reads_windows_and_skips_nodata_tiles(tmp_path):
    height, width, tile, overlap = 300, 400, 96, 16
    data = scene_uint16(height, width)
    data[:, :, :100] = 0  # the left quarter is nodata: the first column of tiles (x 0-96) is all nodata
    path = write_geotiff(tmp_path / "s.tif", data, TRANSFORM, tiled=True)
    seen = []

    def detector(images, threshold=0.5, top_k=None, batch_size=1, nms_iou_threshold=None):
        seen.extend(image.size for image in images)
        return [[] for _ in images]

    raster = open_scene(path)
    spy = ReadSpy(raster._dataset)
    raster._dataset = spy
    stats = {}
    assert predict_scene(detector, raster, tile=tile, overlap=overlap, batch_size=3, progress=False,
                         stats=stats) == []
    raster.close()
    windows = tile_windows(width, height, tile, overlap)
    empty = int((windows[:, 2] <= 100).sum())
    assert empty == 4 and stats == {"tiles": len(windows), "skipped_nodata": empty}
    assert len(seen) == len(windows) - empty and set(seen) == {(tile, tile)}
    assert spy.reads == [(3, tile, tile)] * len(windows)  # one window per tile, never more


def test_large_scene_stretch_from_windows_in_single_blocks(tmp_path, monkeypatch):
    """Above STRETCH_GRID_ABOVE pixels (no overviews): the percentiles of small windows, each inside one block."""
    from sl_detr_hf.geo import raster as raster_module

    data = scene_uint16(300, 400, seed=5)
    path = write_geotiff(tmp_path / "s.tif", data, TRANSFORM, tiled=True, block=64)
    with open_raster(path) as raster:  # 120,000 px: the decimated read, here the whole scene
        assert np.allclose(raster.stretch, [np.percentile(b[b != 0], [2, 98]) for b in data[:3].astype(float)])
        monkeypatch.setattr(raster_module, "STRETCH_GRID_ABOVE", 1000)
        monkeypatch.setattr(raster_module, "STRETCH_SAMPLE_SIDE", 100)
        spy = ReadSpy(raster._dataset)
        raster._dataset = spy
        windowed = raster._percentiles()
    reads = spy.calls
    # 16 evenly spread starts snapped to the block origins: y 0, 64, 128, 192 and x 0, 64, ..., 320
    starts = sorted((w.row_off, w.col_off) for w in reads)
    assert starts == [(y, x) for y in range(0, 256, 64) for x in range(0, 384, 64)]
    assert all(w.width == w.height == 64 for w in reads)  # each window exactly one block
    values = [np.concatenate([data[b, w.row_off:w.row_off + 64, w.col_off:w.col_off + 64].ravel() for w in reads])
              for b in range(3)]
    expected = [np.percentile(v[v != 0].astype(float), [2, 98]) for v in values]
    assert np.allclose(windowed, expected)


def test_pipeline_tiled_path_accepts_a_geotiff(tmp_path):
    """The pipeline on a GeoTIFF path = the pipeline on the same scene scaled by hand, given as a PIL image."""
    from _tiny_sl_detr import tiny_model, tiny_processor
    from PIL import Image

    from sl_detr_hf.pipeline_oriented_detection import OrientedObjectDetectionPipeline

    pipe = OrientedObjectDetectionPipeline(model=tiny_model("rotated"), image_processor=tiny_processor(),
                                           task="oriented-object-detection")
    data = scene_uint16(150, 200, seed=3)
    path = write_geotiff(tmp_path / "s.tif", data, TRANSFORM)
    got = pipe(str(path), threshold=0.0, tile=96, overlap=24, bands=(3, 2, 1), progress=False)
    by_hand = Image.fromarray(reference_rgb(data, (3, 2, 1), (0, 0, 200, 150)))
    expected = pipe(by_hand, threshold=0.0, tile=96, overlap=24, progress=False)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        assert g["label"] == e["label"] and abs(g["score"] - e["score"]) < 1e-3
    with pytest.raises(ValueError, match="`bands` applies to the tiled path"):
        pipe(str(path), bands=(1, 2, 3))
