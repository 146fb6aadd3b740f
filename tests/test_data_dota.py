"""DOTA reader / writer: parsing, malformed lines, unmatched files, the datasets schema."""

from __future__ import annotations

import logging

import datasets
import pytest
import torch
from PIL import Image

from sl_detr_hf.configuration_sl_detr import DOTA_CLASSES
from sl_detr_hf.data.dota import find_class_names, load_dota, parse_dota_label_file, write_dota_labels
from sl_detr_hf.rotated_boxes import rbox_to_poly

GOOD = "10 10 50 10 50 30 10 30 plane 0"


def _make_root(tmp_path, labels: dict[str, str], images: dict[str, tuple[int, int]]):
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "labelTxt").mkdir()
    for name, size in images.items():
        Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "images" / f"{name}.png")
    for name, text in labels.items():
        (tmp_path / "labelTxt" / f"{name}.txt").write_text(text)
    return tmp_path


def test_parse_header_and_objects(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("imagesource:GoogleEarth\ngsd:0.146\n" + GOOD + "\n"
                    "100 100 140 100 140 120 100 120 ship\n\n"
                    "0 0 20 0 20 60 0 60 harbor 1\n")
    objects, problems, header = parse_dota_label_file(path, DOTA_CLASSES["1.0"])
    assert problems == []
    assert header == {"imagesource": "GoogleEarth", "gsd": pytest.approx(0.146)}
    assert [(o.class_name, o.difficult) for o in objects] == [("plane", 0), ("ship", 0), ("harbor", 1)]
    assert objects[0].polygon == (10, 10, 50, 10, 50, 30, 10, 30)


def test_gsd_null(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("imagesource:GoogleEarth\ngsd:null\n")
    assert parse_dota_label_file(path)[2] == {"imagesource": "GoogleEarth", "gsd": None}


def test_malformed_lines_are_skipped_with_warnings(tmp_path, caplog):
    path = tmp_path / "bad.txt"
    lines = [
        GOOD,                                            # 1 ok
        "10 10 50 10 50 30 10 plane",                    # 2 too few fields
        "10 10 50 10 50 30 10 30 plane 0 extra",         # 3 too many fields
        "10 10 50 10 50 30 ten 30 plane 0",              # 4 not a number
        "10 10 50 10 nan 30 10 30 plane 0",              # 5 not finite
        "10 10 50 10 50 30 10 30 spaceship 0",           # 6 unknown class
        "10 10 50 10 50 30 10 30 plane hard",            # 7 bad difficult flag
        "10 10 20 20 30 30 40 40 plane 0",               # 8 degenerate (collinear)
        "5 5 5 5 5 5 5 5 ship 0",                        # 9 degenerate (one point)
        "10 10 50 10 50 30 10 30 ship",                  # 10 ok, difficult 0
    ]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data.dota"):
        objects, problems, _ = parse_dota_label_file(path, DOTA_CLASSES["1.0"])
    assert [o.class_name for o in objects] == ["plane", "ship"]
    assert [(p.line, p.reason) for p in problems] == [
        (2, "too few fields"), (3, "too many fields"), (4, "not a number"), (5, "not finite"),
        (6, "unknown class"), (7, "bad difficult flag"), (8, "degenerate polygon"), (9, "degenerate polygon")]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 8
    assert messages[0].startswith(f"{path}:2: too few fields (line skipped)")
    assert f"{path}:6: unknown class" in messages[4]


def test_write_then_parse_roundtrip(tmp_path):
    boxes = torch.tensor([[30.0, 40.0, 20.0, 8.0, 0.3], [100.0, 60.0, 50.0, 10.0, -1.2]], dtype=torch.float64)
    path = tmp_path / "x.txt"
    write_dota_labels(path, rbox_to_poly(boxes), ["ship", "plane"], [0, 1], imagesource="synthetic", gsd=0.5)
    objects, problems, header = parse_dota_label_file(path, DOTA_CLASSES["1.0"])
    assert problems == [] and header == {"imagesource": "synthetic", "gsd": 0.5}
    got = torch.tensor([o.polygon for o in objects], dtype=torch.float64)
    torch.testing.assert_close(got, rbox_to_poly(boxes), atol=0.006, rtol=0)
    assert [o.difficult for o in objects] == [0, 1]
    with pytest.raises(ValueError, match="more than whitespace"):
        write_dota_labels(path, rbox_to_poly(boxes), [" \t", "plane"])


def test_names_with_spaces_are_written_as_tokens_and_read_back_through_the_class_list(tmp_path):
    """A label line splits on spaces: 'small car' is written small_car and read back as 'small car'."""
    boxes = torch.tensor([[30.0, 40.0, 20.0, 8.0, 0.3], [100.0, 60.0, 50.0, 10.0, -1.2]], dtype=torch.float64)
    path = tmp_path / "x.txt"
    write_dota_labels(path, rbox_to_poly(boxes), ["small  car", "plane"])
    assert [line.split()[8] for line in path.read_text().splitlines()] == ["small_car", "plane"]
    objects, problems, _ = parse_dota_label_file(path, ["plane", "small  car"])
    assert problems == [] and [o.class_name for o in objects] == ["small  car", "plane"]
    assert [o.class_name for o in parse_dota_label_file(path)[0]] == ["small_car", "plane"]  # no list: the field
    with pytest.raises(ValueError, match="'small car' and 'small_car' are both written 'small_car'"):
        parse_dota_label_file(path, ["small car", "small_car"])


def test_load_dota_schema_values_and_reports(tmp_path, caplog):
    root = _make_root(
        tmp_path,
        labels={"P1": "imagesource:GoogleEarth\ngsd:0.2\n" + GOOD + "\n0 0 60 0 60 20 0 20 ship 1\nbroken\n",
                "P2": "", "orphan": GOOD + "\n"},
        images={"P1": (120, 80), "P2": (64, 48), "P3": (32, 32)},
    )
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data.dota"):
        ds, summary = load_dota(root, version="1.5", return_summary=True)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 3
    assert ds.features["objects"]["category"].feature.names == list(DOTA_CLASSES["1.5"])
    assert summary.num_images == 3 and summary.num_objects == 2
    assert dict(summary.skipped_lines) == {"too few fields": 1}
    assert summary.images_without_labels == [str(root / "images" / "P3.png")]
    assert summary.labels_without_images == [str(root / "labelTxt" / "orphan.txt")]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"label files without an image: 1: {root / 'labelTxt' / 'orphan.txt'}" in messages
    assert f"images without a label file (read as images without objects): 1: {root / 'images' / 'P3.png'}" in messages
    assert f"label lines skipped, too few fields: 1: {root / 'labelTxt' / 'P1.txt'}:5: 'broken'" in messages
    row = ds[0]
    assert (row["image_id"], row["width"], row["height"]) == ("P1", 120, 80)
    assert row["gsd"] == pytest.approx(0.2) and row["imagesource"] == "GoogleEarth"
    assert row["image"].size == (120, 80)
    objects = row["objects"]
    assert objects["category"] == [DOTA_CLASSES["1.5"].index("plane"), DOTA_CLASSES["1.5"].index("ship")]
    assert objects["difficult"] == [0, 1]
    assert objects["rbox"][0] == pytest.approx([30, 20, 40, 20, 0], abs=1e-5)
    assert objects["rbox"][1] == pytest.approx([30, 10, 60, 20, 0], abs=1e-5)
    assert objects["area"] == pytest.approx([800, 1200])
    assert ds[2]["objects"]["rbox"] == [] and ds[2]["gsd"] is None
    assert len(load_dota(root, skip_unlabeled=True)) == 2
    assert load_dota(root, skip_difficult=True)[0]["objects"]["difficult"] == [0]


def test_load_dota_save_memory_map_and_stream(tmp_path):
    root = _make_root(tmp_path / "src", labels={"A": GOOD}, images={"A": (60, 40)})
    ds = load_dota(root)
    ds.save_to_disk(str(tmp_path / "saved"))
    again = datasets.load_from_disk(str(tmp_path / "saved"))
    assert again[0]["objects"] == ds[0]["objects"] and again[0]["image"].size == (60, 40)
    streamed = next(iter(ds.to_iterable_dataset()))
    assert streamed["image_id"] == "A" and streamed["objects"]["rbox"][0] == pytest.approx([30, 20, 40, 20, 0])


def test_class_names_override_and_classes_file(tmp_path):
    root = _make_root(tmp_path, labels={"A": "0 0 9 0 9 3 0 3 cat\n0 0 9 0 9 3 0 3 plane\n0 0 9 0 9 3 0 3 cat\n"},
                      images={"A": (16, 16)})
    ds, summary = load_dota(root, class_names=["dog", "cat"], return_summary=True)
    assert ds[0]["objects"]["category"] == [1, 1] and dict(summary.skipped_lines) == {"unknown class": 1}
    assert summary.unknown_classes == {"plane": 1} and summary.class_source == "given"
    (root / "classes.txt").write_text("cat\nplane\n")
    assert find_class_names(root) == ("cat", "plane")
    assert load_dota(root)[0]["objects"]["category"] == [0, 1, 0]
    assert find_class_names(tmp_path / "nowhere", "2.0") == DOTA_CLASSES["2.0"]
    with pytest.raises(ValueError, match="unknown DOTA version"):
        find_class_names(tmp_path / "nowhere", "3.0")
    assert len(DOTA_CLASSES["1.0"]) == 15 and len(DOTA_CLASSES["2.0"]) == 18


def test_own_classes_are_inferred_sorted_and_counted(tmp_path, caplog):
    """A DOTA-format folder of other classes trains on them: no classes.txt, no version -> the labels' names."""
    root = _make_root(tmp_path, labels={"a": "0 0 9 0 9 3 0 3 airplane 0\n0 0 9 0 9 3 0 3 truck\n",
                                        "b": "0 0 9 0 9 3 0 3 airplane 1\n"},
                      images={"a": (16, 16), "b": (16, 16)})
    with caplog.at_level(logging.INFO, logger="sl_detr_hf.data.dota"):
        ds, summary = load_dota(root, return_summary=True)
    assert ds.features["objects"]["category"].feature.names == ["airplane", "truck"]
    assert summary.class_names == ("airplane", "truck") and "inferred from the labels" in summary.class_source
    assert summary.num_objects == 3 and summary.problems == []
    assert [row["category"] for row in ds["objects"]] == [[0, 1], [0]]
    assert "2 classes (inferred from the labels, sorted): airplane, truck" in caplog.text
    assert find_class_names(root) == ("airplane", "truck")
    # DOTA's list only when asked: then these are unknown, and a split that is mostly unknown is refused
    with pytest.raises(ValueError, match=r"3 of 3 objects \(100%\) would be dropped") as err:
        load_dota(root, version="1.0")
    message = str(err.value)
    assert "airplane (2), truck (1)" in message and "--class_names airplane,truck" in message
    assert "classes.txt" in message and "DOTA v1.0's list: plane, baseball-diamond" in message


def test_class_list_precedence(tmp_path):
    """class_names > explicit version > classes.txt (BOM and blank lines allowed) > inferred."""
    root = _make_root(tmp_path, labels={"a": "0 0 9 0 9 3 0 3 ship\n0 0 9 0 9 3 0 3 plane\n"},
                      images={"a": (16, 16)})
    ds = load_dota(root)  # every name is a DOTA class: DOTA's list
    assert ds.features["objects"]["category"].feature.names == list(DOTA_CLASSES["1.0"])
    assert ds[0]["objects"]["category"] == [6, 0]
    (root / "classes.txt").write_bytes("\ufeffship\n\nplane\nharbor\n".encode())
    ds, summary = load_dota(root, return_summary=True)
    assert ds.features["objects"]["category"].feature.names == ["ship", "plane", "harbor"]
    assert summary.class_source == str(root / "classes.txt") and ds[0]["objects"]["category"] == [0, 1]
    assert load_dota(root, version="1.5").features["objects"]["category"].feature.names == list(DOTA_CLASSES["1.5"])
    ds = load_dota(root, version="1.5", class_names=["plane", "ship"])
    assert ds.features["objects"]["category"].feature.names == ["plane", "ship"]
    assert ds[0]["objects"]["category"] == [1, 0]
    with pytest.raises(ValueError, match="repeats"):
        load_dota(root, class_names=["ship", "ship"])


def test_dota_classes_found_keep_dota_ids(tmp_path):
    """Labels whose names are all DOTA classes keep DOTA's list (mmrotate ids) of the first version holding them."""
    from sl_detr_hf.data.dota import infer_class_names

    dota = DOTA_CLASSES["1.0"]
    names, source = infer_class_names({n: 1 for n in dota[:13]})
    assert names == dota and "DOTA v1.0" in source and "13 of its 15" in source
    assert infer_class_names({n: 1 for n in (*dota[:12], "container-crane")})[0] == DOTA_CLASSES["1.5"]
    assert infer_class_names({"ship": 5, "plane": 2})[0] == dota  # a few DOTA names: DOTA's ids all the same
    assert infer_class_names({"helipad": 1, "ship": 1})[0] == DOTA_CLASSES["2.0"]
    assert infer_class_names({"container-crane": 1})[0] == DOTA_CLASSES["1.5"]
    assert infer_class_names({**{n: 1 for n in dota}, "car": 1})[0] == tuple(sorted([*dota, "car"]))
    assert infer_class_names({})[0] == ()


def test_no_threshold_one_more_dota_name_never_moves_the_ids():
    """The old rule switched to DOTA's list at half of its classes: the 8th DOTA name moved every class id."""
    from sl_detr_hf.data.dota import infer_class_names

    dota = DOTA_CLASSES["1.0"]
    for k in range(1, len(dota) + 1):
        names = infer_class_names({n: 1 for n in dota[:k]})[0]
        assert names == dota, k
        mixed = infer_class_names({**{n: 1 for n in dota[:k]}, "car": 1})[0]  # one name outside DOTA's lists
        assert mixed == tuple(sorted([*dota[:k], "car"])), k


def test_names_with_spaces_round_trip_through_a_dota_folder(tmp_path):
    """classes.txt keeps 'small car', the label files say small_car: load -> write -> load keeps names, ids, files."""
    from sl_detr_hf.data.dota import write_dota_folder

    root = _make_root(tmp_path / "src", labels={
        "a": "10 10 50 10 50 30 10 30 small_car 0\n0 0 20 0 20 60 0 60 plane 1\n",
        "b": "5 5 25 5 25 15 5 15 big_truck\n",
    }, images={"a": (100, 80), "b": (40, 40)})
    (root / "classes.txt").write_text("plane\nsmall car\nbig   truck\n")
    ds, summary = load_dota(root, return_summary=True)
    assert summary.problems == [] and summary.num_objects == 3
    assert ds.features["objects"]["category"].feature.names == ["plane", "small car", "big   truck"]
    assert [row["objects"]["category"] for row in ds.remove_columns("image")] == [[1, 0], [2]]
    write_dota_folder(ds, tmp_path / "copy")
    assert (tmp_path / "copy" / "classes.txt").read_text().splitlines() == ["plane", "small car", "big   truck"]
    for name in ("a", "b"):
        fields = [line.split() for line in (tmp_path / "copy" / "labelTxt" / f"{name}.txt").read_text().splitlines()]
        original = [line.split() for line in (root / "labelTxt" / f"{name}.txt").read_text().splitlines()]
        assert [f[8:] for f in fields] == [o[8:] + ["0"] * (10 - len(o)) for o in original]
        assert [[float(v) for v in f[:8]] for f in fields] == [[float(v) for v in o[:8]] for o in original]
    back = load_dota(tmp_path / "copy")
    assert back.features == ds.features
    assert [r["objects"] for r in back.remove_columns("image")] == [r["objects"] for r in ds.remove_columns("image")]
    # a class list whose names share a token cannot be read (nor written) unambiguously
    (root / "classes.txt").write_text("plane\nsmall car\nsmall_car\n")
    with pytest.raises(ValueError, match="both written 'small_car'"):
        load_dota(root)
    with pytest.raises(ValueError, match="line breaks"):
        load_dota(root, class_names=["plane", "small\ncar"])


def test_unknown_classes_are_reported_once_per_cause(tmp_path, caplog):
    """Validation objects outside the training list: counted, one warning line with the classes and examples."""
    lines = [GOOD] * 6 + ["10 10 50 10 50 30 10 30 truck 0"] * 5
    root = _make_root(tmp_path, labels={"v": "\n".join(lines)}, images={"v": (100, 80)})
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data.dota"):
        ds, summary = load_dota(root, class_names=["plane"], return_summary=True)
    assert summary.num_objects == 6 and summary.unknown_classes == {"truck": 5}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # the summary and one line for the cause, not one per object
    path = root / "labelTxt" / "v.txt"
    assert (f"label lines skipped, unknown class (truck: 5): 5: {path}:7: '10 10 50 10 50 30 10 30 truck 0'; "
            f"{path}:8: ") in warnings[1] and warnings[1].endswith("; and 2 more")
    lines.append("10 10 50 10 50 30 10 30 truck 0")  # now 6 of 12: refused
    (root / "labelTxt" / "v.txt").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"6 of 12 objects \(50%\) would be dropped"):
        load_dota(root, class_names=["plane"])
    assert len(load_dota(root, class_names=["plane"], max_unknown_fraction=None)[0]["objects"]["category"]) == 6


def test_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images folder"):
        load_dota(tmp_path)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match="no labels folder"):
        load_dota(tmp_path)
    ds = load_dota(tmp_path, labels_dir=None)
    assert ds[0]["objects"]["polygon"] == []


def test_out_of_range_values_and_encodings_are_counted_line_problems(tmp_path, caplog):
    """difficult=300 (ArrowInvalid in int8), 1e39 (inf in float32), Latin-1 / UTF-16 files: named, counted."""
    path = tmp_path / "odd.txt"
    path.write_text("\n".join([GOOD, "10 10 50 10 50 30 10 30 plane 300", "1e39 10 50 10 50 30 10 30 plane 0",
                               "10 10 50 10 50 30 10 30 plane 2"]) + "\n")
    objects, problems, _ = parse_dota_label_file(path, DOTA_CLASSES["1.0"])
    assert [o.difficult for o in objects] == [0, 2]
    assert [(p.line, p.reason) for p in problems] == [(2, "bad difficult flag"), (3, "not finite")]
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("imagesource:Caf\u00e9\n" + GOOD + "\n").encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.data.dota"):
        objects, problems, header = parse_dota_label_file(latin, DOTA_CLASSES["1.0"])
    assert len(objects) == 1 and header["imagesource"] == "Caf\u00e9"
    assert [(p.line, p.reason) for p in problems] == [(1, "not UTF-8 text")]
    assert f"{latin}:1: not UTF-8 text" in caplog.text
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text(GOOD + "\n" + GOOD + "\n", encoding="utf-16")
    objects, problems, _ = parse_dota_label_file(utf16, DOTA_CLASSES["1.0"])
    assert len(objects) == 2 and problems == []


def test_objects_outside_the_image_are_dropped_and_counted(tmp_path):
    far = "5000 5000 5040 5000 5040 5020 5000 5020 ship 0"  # an image size away from a 100 x 80 image
    border = "-10 10 20 10 20 30 -10 30 ship 0"  # cut by the border: kept
    root = _make_root(tmp_path, {"a": "\n".join([GOOD, far, border])}, {"a": (100, 80)})
    ds, summary = load_dota(root, return_summary=True)
    assert summary.num_objects == 2 and len(ds[0]["objects"]["category"]) == 2
    assert [(p.line, p.reason) for p in summary.problems] == [(2, "outside the image")]
    assert summary.problems[0].path.endswith("a.txt")


def test_classes_file_with_a_byte_order_mark(tmp_path):
    (tmp_path / "classes.txt").write_bytes("\ufeffred-block\nblue-block\n".encode())
    assert find_class_names(tmp_path) == ("red-block", "blue-block")


def test_corrupt_images_are_skipped_with_their_names(tmp_path, caplog):
    """A truncated PNG / JPEG passes a header read; load_dota checks cheaply, skips and counts it (item 7)."""
    root = _make_root(tmp_path, {"good": GOOD, "cut": GOOD, "cutjpg": GOOD}, {"good": (100, 80), "cut": (100, 80)})
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "images" / "cut.png")
    data = (root / "images" / "cut.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(noise).save(root / "images" / "cutjpg.jpg", quality=95)
    data = (root / "images" / "cutjpg.jpg").read_bytes()
    (root / "images" / "cutjpg.jpg").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        ds, summary = load_dota(root, return_summary=True)
    assert ds["image_id"] == ["good"] and summary.num_images == 1
    assert sorted(summary.unreadable_images) == [str(root / "images" / "cut.png"), str(root / "images" / "cutjpg.jpg")]
    assert "cut.png" in caplog.text and "cutjpg.jpg" in caplog.text and "unreadable images skipped: 2" in caplog.text


def test_an_image_that_fails_during_training_names_its_file(tmp_path):
    """An image broken after loading (or loaded unchecked) fails in the data pipeline with its path (item 7)."""
    import numpy as np

    from sl_detr_hf.data.images import UnreadableImageError
    from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
    from sl_detr_hf.training import prepare_dataset

    root = _make_root(tmp_path, {"a": GOOD, "b": GOOD}, {"a": (100, 80)})
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(
        root / "images" / "b.png")
    ds = load_dota(root)
    data = (root / "images" / "b.png").read_bytes()
    (root / "images" / "b.png").write_bytes(data[: len(data) // 2])
    prepared = prepare_dataset(ds, SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}))
    assert prepared[0]["pixel_values"].shape[0] == 3  # the good image still works
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*b\.png"):
        prepared[1]


def test_cli_train_on_own_classes_and_the_error_for_a_mostly_unknown_split(tmp_path, caplog):
    """`sl-detr train --data_format dota` on a folder of other classes: the model's id2label holds them; the
    validation split uses the training list; asking for DOTA's list stops with the classes found."""
    import json

    from sl_detr_hf.cli import main

    labels = {"a": "10 10 50 10 50 30 10 30 airplane 0\n60 40 90 40 90 60 60 60 truck 0\n",
              "b": "20 20 70 20 70 35 20 35 airplane 0\n"}
    train = _make_root(tmp_path / "train", labels, {"a": (100, 80), "b": (100, 80)})
    val = _make_root(tmp_path / "val", {"c": "10 10 50 10 50 30 10 30 airplane 0\n10 10 50 10 50 30 10 30 boat 0\n"
                                              "60 40 90 40 90 60 60 60 truck 0\n"}, {"c": (100, 80)})
    common = ["train", "--data_format", "dota", "--train_dir", str(train), "--image_size", "64", "--max_steps", "1",
              "--per_device_train_batch_size", "2", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
              "--dataloader_num_workers", "0"]
    out = tmp_path / "run"
    assert main([*common, "--val_dir", str(val), "--do_train", "--do_eval", "--output_dir", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "airplane", "1": "truck"}
    assert "label lines skipped, unknown class (boat: 1): 1: " in caplog.text  # the validation object of no class
    with pytest.raises(SystemExit, match=r"--train_dir: .*3 of 3 objects .* --class_names airplane,truck"):
        main([*common, "--dota_version", "1.0", "--output_dir", str(tmp_path / "run2")])
    ok = main([*common, "--class_names", "truck,airplane", "--output_dir", str(tmp_path / "run3")])
    assert ok == 0 and json.loads((tmp_path / "run3" / "config.json").read_text())["id2label"]["0"] == "truck"


def test_a_real_style_scene_rgba_with_header_lines_trains_as_rgb(tmp_path):
    """dota-samples' shapes: an RGBA PNG whose label file opens with imagesource / gsd lines reads, and prepares
    for training as 3 channels with its boxes."""
    from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
    from sl_detr_hf.training import prepare_dataset

    root = _make_root(tmp_path, {"P9": "imagesource:GoogleEarth\ngsd:0.139152881468\n" + GOOD +
                                       "\n60 40 90 40 90 60 60 60 ship 0\n"}, {})
    Image.new("RGBA", (100, 80), (40, 80, 120, 255)).save(root / "images" / "P9.png")
    ds = load_dota(root, class_names=None)
    assert ds[0]["gsd"] == pytest.approx(0.139152881468) and ds[0]["imagesource"] == "GoogleEarth"
    assert ds.features["objects"]["category"].feature.names == list(DOTA_CLASSES["1.0"])  # DOTA names: its ids
    example = prepare_dataset(ds, SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}))[0]
    assert example["pixel_values"].shape == (3, 51, 64)
    assert example["labels"]["boxes"].shape == (2, 5) and example["labels"]["class_labels"].tolist() == [0, 6]
