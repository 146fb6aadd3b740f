"""Large-image splitting (mmrotate img_split semantics) and merging patch detections back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sl_detr_hf.data.dota import load_dota, parse_dota_label_file, write_dota_labels
from sl_detr_hf.data.split import (
    DEFAULT_PADDING_VALUE,
    get_windows,
    merge_patch_detections,
    parse_patch_name,
    patch_name,
    split_dota,
)
from sl_detr_hf.data.synthetic import make_synthetic_dota
from sl_detr_hf.rotated_boxes import box_iou_rotated, poly_to_rbox, rbox_to_poly


def test_windows_3000_by_2500():
    # step = 1024 - 200 = 824; x: ceil((3000 - 1024) / 824 + 1) = 4 starts, the last shifted to 3000 - 1024;
    # y: 3 starts, the last shifted to 2500 - 1024.
    windows = get_windows(3000, 2500)
    xs, ys = [0, 824, 1648, 1976], [0, 824, 1476]
    expected = [[x, y, x + 1024, y + 1024] for x in xs for y in ys]
    assert windows.tolist() == expected


def test_windows_small_image_padding_and_rate_threshold():
    # 800 x 700 in a 1024 window covers 0.534 < 0.6 of it, but it is the best window: kept anyway.
    assert get_windows(800, 700).tolist() == [[0, 0, 1024, 1024]]
    # 1100 x 1024: two windows in x (0 and 1100 - 1024 = 76), both full.
    assert get_windows(1100, 1024).tolist() == [[0, 0, 1024, 1024], [76, 0, 1100, 1024]]
    # With sizes (600, 1024): the 1024 window of a 900 x 900 image covers 0.77 > 0.6 -> kept.
    windows = get_windows(900, 900, sizes=(600, 1024), gaps=(100, 200))
    assert windows.tolist() == [[0, 0, 600, 600], [0, 300, 600, 900], [300, 0, 900, 600], [300, 300, 900, 900],
                                [0, 0, 1024, 1024]]


def test_windows_multi_scale_rates():
    # mmrotate ms: window = int(1024 / rate), gap = int(500 / rate): 2048/1000, 1024/500, 682/333.
    windows = get_windows(1400, 1400, sizes=(1024,), gaps=(500,), rates=(0.5, 1.0, 1.5))
    sides = sorted({int(w[2] - w[0]) for w in windows})
    assert sides == [682, 1024]  # the 2048 window covers 1400^2 / 2048^2 = 0.47 < 0.6 of itself: dropped
    # 682 / step 349: ceil((1400 - 682) / 349 + 1) = 4 starts 0, 349, 698, 1047 -> 1400 - 682 = 718.
    small = windows[windows[:, 2] - windows[:, 0] == 682]
    assert sorted(set(small[:, 0].tolist())) == [0, 349, 698, 718] and len(small) == 16
    with pytest.raises(ValueError, match="larger than its gap"):
        get_windows(100, 100, sizes=(100,), gaps=(100,))


def test_patch_names():
    name = patch_name("P0001", 1024, 824, 1476)
    assert name == "P0001__1024__824___1476"
    assert parse_patch_name(name) == ("P0001", 1024, 824, 1476)
    assert parse_patch_name("my__img__1024__0___0.png") == ("my__img", 1024, 0, 0)
    assert parse_patch_name("P0003__0.5__512___0") == ("P0003", 0.5, 512, 0)
    with pytest.raises(ValueError, match="not a patch name"):
        parse_patch_name("P0001_1024_0_0")


def test_split_iof_truncation_and_padding(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    Image.new("RGB", (1100, 900), (200, 0, 0)).save(src / "images" / "A.png")
    polys = [
        [10, 10, 110, 10, 110, 60, 10, 60],          # inside both windows? x0=0 only (window 2 starts at 76)
        [1000, 100, 1060, 100, 1060, 140, 1000, 140],  # inside window 2 only (x 76..1100)
        [994, 300, 1044, 300, 1044, 340, 994, 340],    # window 1 keeps 30/50 = 0.6 < 0.7: out; window 2 whole
        [60, 500, 100, 500, 100, 540, 60, 540],        # window 2 (x >= 76): 24/40 = 0.6 -> out; window 1 whole
        [50, 700, 150, 700, 150, 740, 50, 740],        # window 2: 74/100 = 0.74 >= 0.7 -> truncated, clipped
    ]
    write_dota_labels(src / "labelTxt" / "A.txt", np.array(polys, float), ["ship"] * 5, [0, 1, 0, 0, 0])
    summary = split_dota(src, tmp_path / "dst", progress=False)
    assert (summary.images, summary.patches, summary.objects, summary.truncated) == (1, 2, 5, 1)
    # 1100 x 900 -> windows (0, 0) and (76, 0), both 1024 x 1024 (padded below 900).
    first, _, _ = parse_dota_label_file(tmp_path / "dst" / "labelTxt" / "A__1024__0___0.txt")
    second, _, _ = parse_dota_label_file(tmp_path / "dst" / "labelTxt" / "A__1024__76___0.txt")
    assert [o.polygon for o in first] == [tuple(map(float, p)) for p in (polys[0], polys[3], polys[4])]
    assert [o.difficult for o in first] == [0, 0, 0]
    assert [o.difficult for o in second] == [1, 0, 2]
    assert second[0].polygon == (924.0, 100.0, 984.0, 100.0, 984.0, 140.0, 924.0, 140.0)
    clipped = poly_to_rbox(torch.tensor(second[2].polygon, dtype=torch.float64))
    torch.testing.assert_close(clipped, torch.tensor([37.0, 720.0, 74.0, 40.0, 0.0], dtype=torch.float64))
    patch = Image.open(tmp_path / "dst" / "images" / "A__1024__76___0.png")
    assert patch.size == (1024, 1024)
    assert patch.getpixel((10, 10)) == (200, 0, 0) and patch.getpixel((10, 950)) == DEFAULT_PADDING_VALUE


def test_split_image_without_labels(tmp_path, caplog):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    Image.new("L", (300, 200), 9).save(src / "images" / "B.png")  # grey: converted to RGB
    summary = split_dota(src, tmp_path / "dst", sizes=(256,), gaps=(56,), progress=False)
    assert summary.patches == 2
    assert "images without a label file (their patches get empty label files): 1" in caplog.text
    assert sorted(p.name for p in (tmp_path / "dst" / "labelTxt").iterdir()) == ["B__256__0___0.txt",
                                                                                   "B__256__44___0.txt"]
    assert (tmp_path / "dst" / "labelTxt" / "B__256__0___0.txt").read_text() == ""
    assert Image.open(tmp_path / "dst" / "images" / "B__256__44___0.png").getpixel((0, 0)) == (9, 9, 9)
    split_dota(src, tmp_path / "test", sizes=(256,), gaps=(56,), labels_dir=None, progress=False)
    assert not (tmp_path / "test" / "labelTxt").exists()


def test_split_then_merge_recovers_every_object(tmp_path):
    # Objects at most 120 px long (their extent < the 200 px overlap), never overlapping each other, so that
    # every object lies whole in some patch and class-wise NMS at 0.1 leaves exactly one copy.
    make_synthetic_dota(tmp_path / "big", num_images=1, image_size=(3000, 2500), seed=3, min_objects=40,
                        max_objects=40, min_object_size=40, max_object_size=120, max_overlap_iou=0.0)
    summary = split_dota(tmp_path / "big", tmp_path / "split", num_workers=2, progress=False)
    assert summary.patches == 12 and summary.patch_objects > summary.objects == 40
    patches = load_dota(tmp_path / "split")
    detections = []
    for row in patches:
        objects = row["objects"]
        scores = torch.where(torch.tensor(objects["difficult"]) == 2, 0.5, 1.0)  # cut copies score lower
        detections.append({"patch_id": row["image_id"], "boxes": torch.tensor(objects["rbox"]).reshape(-1, 5),
                           "scores": scores, "labels": torch.tensor(objects["category"], dtype=torch.long)})
    merged = merge_patch_detections(detections, iou_threshold=0.1)
    assert [m["image_id"] for m in merged] == ["syn00000"]
    truth = load_dota(tmp_path / "big")[0]["objects"]
    gt_boxes = torch.tensor(truth["rbox"], dtype=torch.float64)
    out = merged[0]
    assert out["boxes"].shape == (40, 5)
    iou = box_iou_rotated(gt_boxes, out["boxes"].double())
    best = iou.argmax(1)
    assert sorted(best.tolist()) == list(range(40))  # one detection per object
    assert float(iou.max(1).values.min()) > 0.999
    assert out["labels"][best].tolist() == truth["category"]


def test_merge_offsets_rates_and_classes():
    box = torch.tensor([[10.0, 20.0, 8.0, 4.0, 0.5]])
    dets = [
        {"patch_id": "B__1024__100___200", "boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
        {"image_id": "B", "x": 90, "y": 200, "boxes": box + torch.tensor([[10.0, 0, 0, 0, 0]]),
         "scores": torch.tensor([0.8]), "labels": torch.tensor([1])},  # the same object seen from another patch
        {"image_id": "B", "x": 100, "y": 200, "boxes": box, "scores": torch.tensor([0.7]),
         "labels": torch.tensor([2])},  # same place, other class: kept
        {"image_id": "A", "x": 0, "y": 0, "rate": 0.5, "boxes": box, "scores": torch.tensor([0.6]),
         "labels": torch.tensor([1])},
        {"patch_id": "A__1024__0___0", "boxes": torch.zeros(0, 5), "scores": torch.zeros(0),
         "labels": torch.zeros(0, dtype=torch.long)},
    ]
    merged = merge_patch_detections(dets)
    assert [m["image_id"] for m in merged] == ["A", "B"]
    torch.testing.assert_close(merged[0]["boxes"], torch.tensor([[20.0, 40.0, 16.0, 8.0, 0.5]]))
    torch.testing.assert_close(merged[1]["boxes"], torch.tensor([[110.0, 220.0, 8.0, 4.0, 0.5]] * 2))
    assert merged[1]["scores"].tolist() == pytest.approx([0.9, 0.7]) and merged[1]["labels"].tolist() == [1, 2]
    agnostic = merge_patch_detections(dets, class_agnostic=True)
    assert agnostic[1]["labels"].tolist() == [1]
    assert merge_patch_detections([]) == []


def test_split_multiprocess_matches_inline(tmp_path):
    make_synthetic_dota(tmp_path / "src", num_images=3, image_size=(700, 500), seed=5)
    split_dota(tmp_path / "src", tmp_path / "a", sizes=(256,), gaps=(64,), progress=False)
    split_dota(tmp_path / "src", tmp_path / "b", sizes=(256,), gaps=(64,), num_workers=2, progress=False)
    names = sorted(p.name for p in (tmp_path / "a" / "labelTxt").iterdir())
    assert len(names) == 3 * 4 * 3  # x starts 0, 192, 384, 444; y starts 0, 192, 244
    assert names == sorted(p.name for p in (tmp_path / "b" / "labelTxt").iterdir())
    for name in names:
        assert (tmp_path / "a" / "labelTxt" / name).read_text() == (tmp_path / "b" / "labelTxt" / name).read_text()
    assert (tmp_path / "a" / "classes.txt").read_text() == (tmp_path / "src" / "classes.txt").read_text()
    polys = rbox_to_poly(torch.tensor(load_dota(tmp_path / "a")[0]["objects"]["rbox"]).reshape(-1, 5))
    assert bool((polys > -1).all() & (polys < 257).all())  # clipped or whole: inside the patch


def test_split_without_workers_argument_runs_inline(tmp_path):
    """`sl-detr split SRC DST` passes num_workers=None (no --workers): it runs in this process (issue 10 item 4)."""
    src = make_synthetic_dota(tmp_path / "src", num_images=2, image_size=(300, 260), seed=1, max_objects=4)
    summary = split_dota(src, tmp_path / "dst", sizes=(200,), gaps=(50,), num_workers=None, progress=False)
    assert summary.images == 2 and summary.patches == len(list((tmp_path / "dst" / "images").iterdir())) == 8


def test_split_refuses_the_source_as_destination_and_bad_rates(tmp_path):
    src = make_synthetic_dota(tmp_path / "src", num_images=1, image_size=(120, 100), seed=1, max_objects=2)
    before = sorted(p.name for p in (src / "images").iterdir())
    for dst in (src, tmp_path / "src" / ".", src / "images" / ".."):
        with pytest.raises(ValueError, match="is the source dataset"):
            split_dota(src, dst, sizes=(64,), gaps=(16,), progress=False)
    assert sorted(p.name for p in (src / "images").iterdir()) == before  # nothing written into the source
    for rates in ((0.0,), (1.0, -0.5)):
        with pytest.raises(ValueError, match="rates"):
            split_dota(src, tmp_path / "dst", rates=rates, progress=False)
    assert not (tmp_path / "dst").exists()


def test_cached_split_is_reused_only_for_the_same_files_and_settings(tmp_path):
    """A patches folder of another dataset or other sizes is never reused (stale patches gave wrong mAP)."""
    from sl_detr_hf.data.split import split_dota_cached

    first = make_synthetic_dota(tmp_path / "a", num_images=1, image_size=(300, 260), seed=1, max_objects=3)
    second = make_synthetic_dota(tmp_path / "b", num_images=2, image_size=(200, 200), seed=2, max_objects=3)
    cache = tmp_path / "out" / "patches"
    kw = dict(sizes=(200,), gaps=(50,), progress=False)
    assert split_dota_cached(first, cache, **kw).patches == 4
    assert split_dota_cached(first, cache, **kw) is None  # same inputs: reused
    names = lambda: sorted(p.stem for p in (cache / "images").iterdir())  # noqa: E731
    assert all(n.startswith("syn00000__200__") for n in names()) and len(names()) == 4
    assert split_dota_cached(first, cache, sizes=(128,), gaps=(28,), progress=False).patches == 9  # other sizes
    assert len(names()) == 9 and all("__128__" in n for n in names())
    assert split_dota_cached(second, cache, **kw).patches == 2  # other data: old patches removed
    assert names() == ["syn00000__200__0___0", "syn00001__200__0___0"]
    label = second / "labelTxt" / "syn00001.txt"
    label.write_text(label.read_text() + "1 1 30 1 30 30 1 30 " + label.read_text().split()[8] + " 0\n")
    import os

    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert split_dota_cached(second, cache, **kw) is not None  # an edited label file: split again


def test_merge_refuses_nan_scores_and_bad_thresholds():
    good = {"patch_id": "a__64__0___0", "boxes": [[10.0, 10.0, 8.0, 4.0, 0.0]], "scores": [0.9], "labels": [0]}
    bad = {"patch_id": "a__64__32___0", "boxes": [[12.0, 10.0, 8.0, 4.0, 0.0]], "scores": [float("nan")],
           "labels": [0]}
    with pytest.raises(ValueError, match=r"detections\[1\] \(a__64__32___0\) has NaN"):
        merge_patch_detections([good, bad])
    with pytest.raises(ValueError, match="iou_threshold"):
        merge_patch_detections([good], iou_threshold=1.5)


def test_objects_outside_a_small_rgba_image_stay_out_of_the_padding(tmp_path, caplog):
    """Real-scene regression (dota-samples' RGBA crops carry labels of the larger frame): a 120 x 100 RGBA image
    split into a padded 256 window keeps its one object; the two objects beyond the image would have landed in the
    padding. They are counted "outside the image" problems, reported in one warning line."""
    import logging

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    Image.new("RGBA", (120, 100), (40, 80, 120, 255)).save(src / "images" / "crop.png")
    (src / "labelTxt" / "crop.txt").write_text("imagesource:GoogleEarth\ngsd:0.5\n"
                                               "10 10 50 10 50 30 10 30 plane 0\n"
                                               "150 150 190 150 190 170 150 170 plane 0\n"
                                               "200 20 240 20 240 40 200 40 plane 1\n")
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data.split"):
        summary = split_dota(src, tmp_path / "dst", sizes=(256,), gaps=(56,), progress=False)
    assert (summary.patches, summary.objects, summary.patch_objects) == (1, 1, 1)
    assert [(p.line, p.reason) for p in summary.problems] == [(4, "outside the image"), (5, "outside the image")]
    assert len(caplog.records) == 1 and "label lines skipped, outside the image: 2: " in caplog.text
    patch = tmp_path / "dst" / "images" / "crop__256__0___0.png"
    with Image.open(patch) as im:
        assert (im.mode, im.size) == ("RGB", (256, 256))
    objects, problems, header = parse_dota_label_file(tmp_path / "dst" / "labelTxt" / "crop__256__0___0.txt")
    assert [o.polygon for o in objects] == [(10, 10, 50, 10, 50, 30, 10, 30)] and header["gsd"] == 0.5
