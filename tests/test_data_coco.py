"""COCO reader: horizontal boxes, rotated boxes from polygons or an extra field, bad annotations."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from sl_detr_hf.data.coco import load_coco


def _write(tmp_path, annotations):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (100, 80)).save(tmp_path / "img" / "a.jpg")
    data = {"images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
                       {"id": 8, "file_name": "gone.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 5, "name": "car"}, {"id": 2, "name": "person"}],
            "annotations": annotations}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "img", tmp_path / "ann.json"


GOOD = {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 20, 30, 10], "area": 300, "iscrowd": 0,
        "segmentation": [[10, 20, 40, 20, 40, 30, 10, 30]], "rbox": [50, 40, 20, 10, 0.5]}


def test_horizontal_and_bad_annotations(tmp_path, caplog):
    images, ann = _write(tmp_path, [
        GOOD,
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 5, 5]},
        {"id": 3, "image_id": 7, "category_id": 9, "bbox": [0, 0, 5, 5]},
        {"id": 4, "image_id": 99, "category_id": 2, "bbox": [0, 0, 5, 5]},
        {"id": 5, "image_id": 7, "category_id": 2, "bbox": [0, 0, 0, 5]},
        {"id": 6, "image_id": 7, "category_id": 2, "bbox": [0, 0, "x", 5]},
    ])
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data.coco"):
        ds, summary = load_coco(images, ann, return_summary=True)
    assert len(ds) == 1 and summary.num_objects == 2
    assert summary.missing_images == [str(images / "gone.jpg")]
    assert summary.problems == [f"{ann}: annotation id 3: category_id: unknown category",
                                f"{ann}: annotation id 4: image_id: unknown image",
                                f"{ann}: annotation id 5: bbox: bad box",
                                f"{ann}: annotation id 6: bbox: bad box"]
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 5
    row = ds[0]
    assert row["image_id"] == 7 and row["image"].size == (100, 80)
    assert ds.features["objects"]["category"].feature.names == ["person", "car"]  # sorted by COCO id
    objects = row["objects"]
    assert objects["bbox"] == [[10, 20, 30, 10], [0, 0, 5, 5]] and objects["category"] == [1, 0]
    assert objects["category_id"] == [5, 2] and objects["area"] == [300, 25] and "rbox" not in objects


def test_rotated_from_polygon_or_field(tmp_path):
    images, ann = _write(tmp_path, [GOOD, {**GOOD, "id": 2, "segmentation": {"counts": "rle", "size": [1, 1]},
                                           "rbox": [0, 0, 0, 0, 0]}])
    ds, summary = load_coco(images, ann, rotated="segmentation", return_summary=True)
    assert ds[0]["objects"]["rbox"] == [pytest.approx([25, 25, 30, 10, 0], abs=1e-4)]
    assert summary.problems == [f"{ann}: annotation id 2: segmentation: no usable rotated box"]
    ds = load_coco(images, ann, rotated="rbox")
    assert ds[0]["objects"]["rbox"] == [pytest.approx([50, 40, 20, 10, 0.5], abs=1e-6)]
    with pytest.raises(ValueError, match="not a COCO detection file"):
        (tmp_path / "bad.json").write_text("{}")
        load_coco(images, tmp_path / "bad.json")
