"""YOLO-OBB reader: the same dataset as load_dota, data.yaml names, counted reports, DOTA export, CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from sl_detr_hf.data import load_dota, load_yolo_obb
from sl_detr_hf.data.dota import write_dota_folder, write_dota_labels
from sl_detr_hf.data.yolo_obb import find_data_yaml, labels_dir_for, parse_yolo_obb_label_file, read_yaml_names
from sl_detr_hf.rotated_boxes import rbox_to_poly

NAMES = ("airplane", "small car", "tank")
SIZES = {"a": (160, 120), "b": (96, 200), "c": (64, 64)}


def _dota_root(root: Path) -> Path:
    """A DOTA folder of rotated rectangles (own classes, one with a space as 'small_car' in DOTA)."""
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    rng = np.random.default_rng(0)
    for k, (name, (w, h)) in enumerate(SIZES.items()):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        n = 3 - k  # 3, 2, 1 objects
        boxes = torch.tensor([[w * (0.3 + 0.2 * i), h * (0.3 + 0.2 * i), 20 + 4 * i, 8 + 2 * i, 0.4 * i - 0.5]
                              for i in range(n)], dtype=torch.float64)
        classes = [NAMES[(i + k) % 3].replace(" ", "_") for i in range(n)]
        write_dota_labels(root / "labelTxt" / f"{name}.txt", rbox_to_poly(boxes), classes, precision=4)
    (root / "classes.txt").write_text("\n".join(n.replace(" ", "_") for n in NAMES) + "\n")
    return root


def _to_yolo(dota: Path, dst: Path, split: str = "train", names=NAMES, yaml: str | None = None) -> Path:
    """The DOTA folder as an Ultralytics YOLO-OBB dataset: dst/images/<split>, dst/labels/<split>, dst/data.yaml."""
    tokens = [n.replace(" ", "_") for n in names]
    (dst / "images" / split).mkdir(parents=True)
    (dst / "labels" / split).mkdir(parents=True)
    for image in sorted((dota / "images").iterdir()):
        shutil.copyfile(image, dst / "images" / split / image.name)
        w, h = Image.open(image).size
        lines = []
        for line in (dota / "labelTxt" / f"{image.stem}.txt").read_text().splitlines():
            parts = line.split()
            coords = np.array(parts[:8], dtype=np.float64) / np.tile([w, h], 4)
            lines.append(" ".join([str(tokens.index(parts[8])), *(f"{c:.8f}" for c in coords)]))
        (dst / "labels" / split / f"{image.stem}.txt").write_text("\n".join(lines) + "\n")
    names_yaml = "names:\n" + "".join(f"  - {n}\n" for n in names)
    default = f"path: {dst}\ntrain: images/train\nval: images/val\nnc: {len(names)}\n" + names_yaml
    (dst / "data.yaml").write_text(yaml if yaml is not None else default)
    return dst / "images" / split


def test_a_yolo_folder_made_from_a_dota_folder_gives_the_same_dataset(tmp_path):
    dota = _dota_root(tmp_path / "dota")
    images = _to_yolo(dota, tmp_path / "yolo")
    expected = load_dota(dota)
    got, summary = load_yolo_obb(images, return_summary=True)
    assert isinstance(got, datasets.Dataset) and got.features == load_dota(dota, class_names=NAMES).features
    assert got.features["objects"]["category"].feature.names == list(NAMES)  # from data.yaml, spaces kept
    assert summary.class_source == str(tmp_path / "yolo" / "data.yaml") and summary.problems == []
    assert summary.num_images == 3 and summary.num_objects == 6
    for field in ("image_id", "width", "height"):
        assert got[field] == expected[field]
    for mine, theirs in zip(got["objects"], expected["objects"]):
        assert mine["category"] == theirs["category"] and mine["difficult"] == theirs["difficult"]
        torch.testing.assert_close(torch.tensor(mine["polygon"]), torch.tensor(theirs["polygon"]), atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor(mine["rbox"]), torch.tensor(theirs["rbox"]), atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor(mine["area"]), torch.tensor(theirs["area"]), atol=0.05, rtol=0)
    assert got[0]["image"].size == SIZES["a"] and got["gsd"] == [None] * 3


def test_data_yaml_names_as_a_list_or_a_mapping(tmp_path):
    assert read_yaml_names(_write(tmp_path / "l.yaml", "names: [plane, 'small car']\n")) == ("plane", "small car")
    assert read_yaml_names(_write(tmp_path / "d.yaml", "nc: 2\nnames:\n  1: ship\n  0: plane\n")) == ("plane", "ship")
    assert read_yaml_names(_write(tmp_path / "s.yaml", "names: {'0': a, '1': b}\n")) == ("a", "b")
    assert read_yaml_names(_write_bytes(tmp_path / "bom.yaml", "\ufeffnames: [x]\n")) == ("x",)
    with pytest.raises(ValueError, match=r"keys 0 \.\. 1, got \[0, 2\]"):
        read_yaml_names(_write(tmp_path / "gap.yaml", "names: {0: a, 2: b}\n"))
    with pytest.raises(ValueError, match="has no 'names:'"):
        read_yaml_names(_write(tmp_path / "none.yaml", "nc: 3\n"))
    with pytest.raises(ValueError, match="repeats"):
        read_yaml_names(_write(tmp_path / "rep.yaml", "names: [a, a]\n"))
    # the mapping form read by load_yolo_obb; Roboflow's layout D/train/images, D/train/labels, D/data.yaml
    dota = _dota_root(tmp_path / "dota")
    _to_yolo(dota, tmp_path / "rf", yaml="names:\n  0: airplane\n  1: small car\n  2: tank\n")
    (tmp_path / "rf" / "train").mkdir()
    shutil.move(tmp_path / "rf" / "images" / "train", tmp_path / "rf" / "train" / "images")
    shutil.move(tmp_path / "rf" / "labels" / "train", tmp_path / "rf" / "train" / "labels")
    images = tmp_path / "rf" / "train" / "images"
    assert labels_dir_for(images) == tmp_path / "rf" / "train" / "labels"
    assert find_data_yaml(images) == tmp_path / "rf" / "data.yaml"
    ds = load_yolo_obb(images)
    assert ds.features["objects"]["category"].feature.names == list(NAMES)
    assert sum(len(o["category"]) for o in ds["objects"]) == 6


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_labels_dir_and_class_names_without_a_data_yaml(tmp_path, caplog):
    assert labels_dir_for("/d/images/train") == Path("/d/labels/train")
    assert labels_dir_for("/images/x/images/val") == Path("/images/x/labels/val")  # the last 'images' only
    with pytest.raises(ValueError, match="no 'images' folder"):
        labels_dir_for(tmp_path / "pics")
    images = _to_yolo(_dota_root(tmp_path / "dota"), tmp_path / "yolo")
    (tmp_path / "yolo" / "data.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data.yolo_obb"):
        ds = load_yolo_obb(images)
    assert ds.features["objects"]["category"].feature.names == ["0", "1", "2"]
    assert "named by their indices" in caplog.text
    ds = load_yolo_obb(images, class_names=["p", "q", "r"])  # class_names wins over any data.yaml
    assert ds.features["objects"]["category"].feature.names == ["p", "q", "r"]


def test_bad_lines_and_missing_label_files_are_counted_and_named(tmp_path, caplog):
    root = tmp_path / "yolo"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [plane, ship]\n")
    for name in ("a", "nolabel"):
        Image.new("RGB", (100, 50), (9, 9, 9)).save(root / "images" / "val" / f"{name}.jpg")
    good = "0 0.1 0.1 0.5 0.1 0.5 0.3 0.1 0.3"
    lines = [good,                                          # 1 ok
             "1 0.1 0.1 0.5 0.1 0.5 0.3",                   # 2 too few fields
             good + " 0.9",                                 # 3 too many fields
             "1 0.1 0.1 0.5 0.1 0.5 x 0.1 0.3",             # 4 not a number
             "1 0.1 0.1 0.5 nan 0.5 0.3 0.1 0.3",           # 5 not finite
             "7 0.1 0.1 0.5 0.1 0.5 0.3 0.1 0.3",           # 6 unknown class (index 7 of 2 names)
             "1 10 10 50 10 50 30 10 30",                   # 7 not normalized (pixels)
             "1 0.2 0.2 0.2 0.2 0.2 0.2 0.2 0.2",           # 8 degenerate polygon
             "1 1.2 1.2 1.4 1.2 1.4 1.4 1.2 1.4",           # 9 outside the image
             "", "1 0.6 0.6 0.9 0.6 0.9 0.8 0.6 0.8"]       # 11 ok
    (root / "labels" / "val" / "a.txt").write_text("\n".join(lines) + "\n")
    (root / "labels" / "val" / "orphan.txt").write_text(good + "\n")
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data"):
        ds, summary = load_yolo_obb(root / "images" / "val", return_summary=True)
    label = root / "labels" / "val" / "a.txt"
    assert [(p.path, p.line, p.reason) for p in summary.problems] == [
        (str(label), 2, "too few fields"), (str(label), 3, "too many fields"), (str(label), 4, "not a number"),
        (str(label), 5, "not finite"), (str(label), 6, "unknown class"), (str(label), 7, "not normalized"),
        (str(label), 8, "degenerate polygon"), (str(label), 9, "outside the image")]
    assert summary.unknown_classes == {"7": 1}
    assert summary.images_without_labels == [str(root / "images" / "val" / "nolabel.jpg")]
    assert summary.labels_without_images == [str(root / "labels" / "val" / "orphan.txt")]
    assert ds["image_id"] == ["a", "nolabel"] and ds[1]["objects"]["category"] == []
    assert ds[0]["objects"]["category"] == [0, 1] and summary.num_objects == 2
    assert ds[0]["objects"]["polygon"][0] == pytest.approx([10, 5, 50, 5, 50, 15, 10, 15])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 + 8 + 2  # the summary, one line per cause, the two unmatched-file lines
    assert any(f"label lines skipped, unknown class (7: 1): 1: {label}:6: " in m for m in messages)
    assert any(f"images without a label file (read as images without objects): 1: {root / 'images' / 'val'}" in m
               for m in messages)
    objects, problems = parse_yolo_obb_label_file(label, num_classes=2, log=False)
    assert len(objects) == 4 and objects[0].polygon == (0.1, 0.1, 0.5, 0.1, 0.5, 0.3, 0.1, 0.3)


def test_a_split_of_mostly_unknown_class_indices_is_refused(tmp_path):
    images = _to_yolo(_dota_root(tmp_path / "dota"), tmp_path / "yolo")
    (tmp_path / "yolo" / "data.yaml").write_text("names: [airplane]\n")  # 5 of the 6 objects have index 1 or 2
    with pytest.raises(ValueError, match=r"5 of 6 objects \(83%\) would be dropped") as err:
        load_yolo_obb(images)
    assert "Classes found in the labels: 2 (3), 1 (2), 0 (1)" in str(err.value)
    assert "data.yaml" in str(err.value) and "--class_names" in str(err.value)


def test_exif_rotated_jpeg_is_measured_upright(tmp_path):
    """Phone photos: labels are normalized by the upright image (as Ultralytics does and as training decodes it)."""
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 80 x 40, shown 40 x 80
    Image.new("RGB", (80, 40)).save(root / "images" / "train" / "p.jpg", exif=exif)
    (root / "labels" / "train" / "p.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.5 0.25 0.5\n")
    row = load_yolo_obb(root / "images" / "train", class_names=["x"])[0]
    assert (row["width"], row["height"]) == (40, 80) == row["image"].size  # datasets decodes it upright too
    assert row["objects"]["polygon"][0] == pytest.approx([10, 20, 30, 20, 30, 40, 10, 40])


def test_write_dota_folder_round_trip(tmp_path):
    """YOLO-OBB -> DOTA folder -> dataset keeps the names as data.yaml spells them ('small car'), and the ids."""
    images = _to_yolo(_dota_root(tmp_path / "dota"), tmp_path / "yolo")
    ds = load_yolo_obb(images)
    assert ds.features["objects"]["category"].feature.names == list(NAMES)
    write_dota_folder(ds, tmp_path / "as_dota")
    assert (tmp_path / "as_dota" / "classes.txt").read_text().splitlines() == ["airplane", "small car", "tank"]
    fields = {line.split()[8] for p in (tmp_path / "as_dota" / "labelTxt").iterdir()
              for line in p.read_text().splitlines()}
    assert fields == {"airplane", "small_car", "tank"}  # one field per class: DOTA lines split on spaces
    back = load_dota(tmp_path / "as_dota")
    assert back.features["objects"]["category"].feature.names == list(NAMES)
    assert back["image_id"] == ds["image_id"]
    for a, b in zip(back["objects"], ds["objects"]):
        assert a["category"] == b["category"]
        torch.testing.assert_close(torch.tensor(a["polygon"]), torch.tensor(b["polygon"]), atol=0.006, rtol=0)
    with pytest.raises(FileExistsError):
        write_dota_folder(ds, tmp_path / "as_dota")
    # and back: the DOTA folder as YOLO-OBB again (its classes.txt names in data.yaml) reads as the first dataset
    again = _to_yolo(tmp_path / "as_dota", tmp_path / "yolo2", names=NAMES)
    twice = load_yolo_obb(again)
    assert twice.features == ds.features
    assert [r["category"] for r in twice["objects"]] == [r["category"] for r in ds["objects"]]


def test_write_dota_folder_refuses_names_it_cannot_tell_apart(tmp_path):
    """'small car' and 'small_car' would both be small_car in the label files: refused before writing anything."""
    images = _to_yolo(_dota_root(tmp_path / "dota"), tmp_path / "yolo")
    ds = load_yolo_obb(images, class_names=["airplane", "small car", "small_car"])
    with pytest.raises(ValueError, match="'small car' and 'small_car' are both written 'small_car'"):
        write_dota_folder(ds, tmp_path / "as_dota")
    assert not (tmp_path / "as_dota").exists()
    (tmp_path / "yolo" / "data.yaml").write_text('names: ["air\\nplane", "small car", "tank"]\n')
    with pytest.raises(ValueError, match="line breaks"):
        load_yolo_obb(images)


def test_cli_train_on_a_yolo_obb_folder(tmp_path, capsys):
    """`sl-detr train --data_format yolo_obb`: names from data.yaml, validation on the training list."""
    from sl_detr_hf.cli import main

    dota = _dota_root(tmp_path / "dota")
    train = _to_yolo(dota, tmp_path / "yolo", "train")
    val = tmp_path / "yolo" / "images" / "val"
    shutil.copytree(train, val)
    shutil.copytree(tmp_path / "yolo" / "labels" / "train", tmp_path / "yolo" / "labels" / "val")
    out = tmp_path / "run"
    assert main(["train", "--data_format", "yolo_obb", "--train_dir", str(train), "--val_dir", str(val),
                 "--image_size", "64", "--max_steps", "2", "--per_device_train_batch_size", "2",
                 "--per_device_eval_batch_size", "2", "--use_cpu", "--report_to", "none", "--do_train",
                 "--do_eval", "--eval_strategy", "no", "--save_strategy", "no", "--output_dir", str(out),
                 "--dataloader_num_workers", "0"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "airplane", "1": "small car", "2": "tank"}
    assert "eval_mAP" in json.loads((out / "final_metrics.json").read_text())


def test_cli_evaluate_a_yolo_obb_split_scores_as_its_dota_twin(tmp_path):
    """`sl-detr evaluate --data_format yolo_obb` splits, predicts, merges and scores the same as the DOTA folder."""
    from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection, SlDetrImageProcessor
    from sl_detr_hf.cli import main
    from sl_detr_hf.commands._common import tiny_config_kwargs

    dota = _dota_root(tmp_path / "dota")
    images = _to_yolo(dota, tmp_path / "yolo", "val")
    torch.manual_seed(0)
    id2label = dict(enumerate(NAMES))
    model = SlDetrForObjectDetection(SlDetrConfig(**tiny_config_kwargs(3, id2label, d_model=32, layers=1,
                                                                       num_queries=20)))
    model.save_pretrained(tmp_path / "model")
    SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "model")
    common = ["evaluate", "--model", str(tmp_path / "model"), "--patch_size", "128", "--gap", "28", "--device", "cpu"]
    assert main([*common, "--data_format", "yolo_obb", "--data_dir", str(images),
                 "--output_dir", str(tmp_path / "eval_yolo")]) == 0
    yolo = json.loads((tmp_path / "eval_yolo" / "metrics.json").read_text())
    # the DOTA twin names "small car" small_car: evaluate it with those names
    (tmp_path / "model_dota").mkdir()
    model.config.id2label = {0: "airplane", 1: "small_car", 2: "tank"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(tmp_path / "model_dota")
    SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "model_dota")
    common[2] = str(tmp_path / "model_dota")
    assert main([*common, "--data_dir", str(dota), "--output_dir", str(tmp_path / "eval_dota")]) == 0
    twin = json.loads((tmp_path / "eval_dota" / "metrics.json").read_text())
    assert list(yolo["AP"]) == list(NAMES) and 0.0 <= yolo["mAP"] <= 1.0
    assert yolo["mAP"] == pytest.approx(twin["mAP"], abs=1e-6)
    detections = {run: sorted(p.read_text() for p in (tmp_path / run / "task1").iterdir())
                  for run in ("eval_yolo", "eval_dota")}
    assert detections["eval_yolo"] == detections["eval_dota"]  # the same patches, predictions and merge
    lines = [line.split() for text in detections["eval_yolo"] for line in text.splitlines()]
    assert lines and {parts[0] for parts in lines} <= set(SIZES)
