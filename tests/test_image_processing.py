"""SlDetrImageProcessor: resize / pad / labels, round trip through post-processing, save / load, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import ModelOutput

from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
from sl_detr_hf.rotated_boxes import poly_to_rbox, rbox_to_poly

NUM_CLASSES = 4


def _random_objects(rng: np.random.Generator, height: int, width: int, n: int) -> list[dict]:
    """Rotated rectangles inside the image, given as DOTA polygons in a random corner order."""
    objects = []
    for _ in range(n):
        w, h = rng.uniform(8, 0.3 * min(height, width), size=2)
        cx, cy = rng.uniform(0.35 * width, 0.65 * width), rng.uniform(0.35 * height, 0.65 * height)
        theta = rng.uniform(-math.pi, math.pi)
        cos, sin = math.cos(theta), math.sin(theta)
        corners = [(cx + cos * dx - sin * dy, cy + sin * dx + cos * dy)
                   for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
        shift = int(rng.integers(4))
        corners = corners[shift:] + corners[:shift]
        objects.append({"polygon": [v for p in corners for v in p], "category_id": int(rng.integers(NUM_CLASSES)),
                        "difficult": int(rng.integers(2))})
    return objects


def _perfect_outputs(labels: list, num_queries: int = 12) -> ModelOutput:
    """Logits high for the right class of the first queries, pred_boxes = the labels; other queries low."""
    batch, dim = len(labels), labels[0]["boxes"].shape[-1]
    logits = torch.full((batch, num_queries, NUM_CLASSES), -10.0)
    boxes = torch.full((batch, num_queries, dim), 0.25)
    if dim == 5:
        boxes[..., 4] = 0.0
    for b, target in enumerate(labels):
        n = target["boxes"].shape[0]
        boxes[b, :n] = target["boxes"]
        logits[b, torch.arange(n), target["class_labels"]] = 10.0
    return ModelOutput(logits=logits, pred_boxes=boxes)


def _angle_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = torch.remainder(a - b + math.pi / 2, math.pi) - math.pi / 2
    return d.abs()


@pytest.mark.parametrize("size", [{"shortest_edge": 1024, "longest_edge": 1024},
                                  {"shortest_edge": 600, "longest_edge": 1000},
                                  {"max_height": 333, "max_width": 517}])
def test_rotated_round_trip(size):
    rng = np.random.default_rng(0)
    shapes = [(480, 640), (1000, 357), (731, 731), (250, 1203)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    annotations = [{"image_id": i, "annotations": _random_objects(rng, h, w, 5)} for i, (h, w) in enumerate(shapes)]
    processor = SlDetrImageProcessor(size=size)
    enc = processor(images=images, annotations=annotations, return_tensors="pt")

    pad_h, pad_w = enc["pixel_values"].shape[-2:]
    for b, target in enumerate(enc["labels"]):
        (h, w), (hr, wr) = target["orig_size"].tolist(), target["size"].tolist()
        assert abs(wr / w - hr / h) <= 1 / w + 1 / h  # aspect kept
        assert int(enc["pixel_mask"][b].sum()) == hr * wr
        assert bool(enc["pixel_mask"][b, :hr, :wr].all())
        assert pad_h == max(int(t["size"][0]) for t in enc["labels"])
        assert target["boxes"].shape == (5, 5)
        assert torch.equal(target["difficult"], torch.tensor([bool(o["difficult"]) for o in
                                                             annotations[b]["annotations"]]))

    results = processor.post_process_object_detection(
        _perfect_outputs(enc["labels"]), threshold=0.5, target_sizes=[t["orig_size"].tolist() for t in enc["labels"]])
    for target, ann, res in zip(enc["labels"], annotations, results):
        expected = poly_to_rbox(torch.tensor([o["polygon"] for o in ann["annotations"]], dtype=torch.float64))
        assert len(res["scores"]) == len(expected)
        # All scores are equal, so the output order is not the object order: match by centre.
        got = res["rboxes"].double()
        dist = torch.cdist(got[:, :2], expected[:, :2])
        match = dist.argmin(dim=1)
        assert sorted(match.tolist()) == list(range(len(expected)))
        exp = expected[match]
        assert torch.allclose(got[:, :4], exp[:, :4], atol=0.5)
        assert bool((_angle_diff(got[:, 4], exp[:, 4]) < 1e-3).all())
        assert torch.allclose(res["polygons"].double(), rbox_to_poly(exp), atol=0.5)
        pts = torch.tensor([o["polygon"] for o in ann["annotations"]], dtype=torch.float64)[match].view(-1, 4, 2)
        hull = torch.cat((pts.amin(1), pts.amax(1)), dim=-1)
        assert torch.allclose(res["boxes"].double(), hull, atol=0.5)
        assert torch.equal(res["labels"], target["class_labels"][match])


def test_labels_are_normalized_by_resized_size():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    rbox = [200.0, 120.0, 80.0, 30.0, 0.4]
    enc = SlDetrImageProcessor(size={"shortest_edge": 600, "longest_edge": 1000})(
        images=image, annotations={"image_id": "P0001", "annotations": [{"rbox": rbox, "category_id": 2}]},
        return_tensors="pt")
    target = enc["labels"][0]
    assert target["size"].tolist() == [600, 1000] and target["orig_size"].tolist() == [300, 500]
    assert target["image_id"] == "P0001"
    resized = target["boxes"][0] * torch.tensor([1000, 600, 1000, 600, 1])
    assert torch.allclose(resized, torch.tensor([400.0, 240.0, 160.0, 60.0, 0.4]), atol=1e-4)
    assert enc["pixel_values"].shape == (1, 3, 600, 1000)


@pytest.mark.parametrize("pad_size", [None, {"height": 900, "width": 1100}])
def test_horizontal_round_trip(pad_size):
    rng = np.random.default_rng(2)
    shapes = [(400, 600), (700, 300)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]
    annotations = []
    for i, (h, w) in enumerate(shapes):
        objs = []
        for _ in range(4):
            x, y = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
            objs.append({"bbox": [x, y, rng.uniform(5, w * 0.4), rng.uniform(5, h * 0.4)],
                         "category_id": int(rng.integers(NUM_CLASSES))})
        annotations.append({"image_id": i, "annotations": objs})
    processor = SlDetrImageProcessor(box_type="horizontal", size={"shortest_edge": 512, "longest_edge": 800},
                                     pad_size=pad_size)
    enc = processor(images=images, annotations=annotations, return_tensors="pt")
    if pad_size is not None:
        assert enc["pixel_values"].shape[-2:] == (900, 1100)
    assert "difficult" not in enc["labels"][0]
    results = processor.post_process_object_detection(
        _perfect_outputs(enc["labels"]), target_sizes=torch.tensor([t["orig_size"].tolist() for t in enc["labels"]]))
    for ann, res in zip(annotations, results):
        xywh = torch.tensor([o["bbox"] for o in ann["annotations"]], dtype=torch.float64)
        expected = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=-1)
        got = res["boxes"].double()
        match = torch.cdist(got, expected).argmin(dim=1)
        assert sorted(match.tolist()) == [0, 1, 2, 3]
        assert torch.allclose(got, expected[match], atol=0.5)
        assert "rboxes" not in res


def test_post_process_top_k_threshold_and_nms():
    processor = SlDetrImageProcessor(max_detections=3)
    logits = torch.tensor([[[4.0, -4.0], [3.0, 2.0], [1.0, -9.0], [0.5, -9.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.1, 0.0], [0.5, 0.5, 0.2, 0.1, 0.0],
                           [0.1, 0.1, 0.05, 0.05, 0.3], [0.8, 0.8, 0.1, 0.1, 0.0]]])
    out = processor.post_process_object_detection({"logits": logits, "pred_boxes": boxes}, threshold=0.0,
                                                  target_sizes=[(100, 200)])[0]
    assert out["scores"].shape == (3,)  # default top_k = max_detections
    assert torch.allclose(out["scores"], torch.sigmoid(torch.tensor([4.0, 3.0, 2.0])))
    assert out["labels"].tolist() == [0, 0, 1]
    assert torch.allclose(out["rboxes"][0], torch.tensor([100.0, 50.0, 40.0, 10.0, 0.0]))
    nms = processor.post_process_object_detection({"logits": logits, "pred_boxes": boxes}, threshold=0.0,
                                                  target_sizes=[(100, 200)], top_k=4, nms_iou_threshold=0.5)[0]
    assert nms["labels"].tolist() == [0, 1, 0]  # the second class-0 copy of box 0 is suppressed
    high = processor.post_process_object_detection({"logits": logits, "pred_boxes": boxes}, threshold=0.96)[0]
    assert high["labels"].tolist() == [0] and torch.allclose(high["boxes"][0], torch.tensor([0.4, 0.45, 0.6, 0.55]))
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_object_detection({"logits": logits, "pred_boxes": boxes}, target_sizes=[(1, 1)] * 2)


def test_save_and_load(tmp_path):
    from transformers import AutoImageProcessor

    from sl_detr_hf.configuration_sl_detr import SlDetrConfig

    processor = SlDetrImageProcessor(box_type="horizontal", max_detections=123,
                                     size={"shortest_edge": 640, "longest_edge": 960}, do_normalize=False)
    processor.save_pretrained(tmp_path)
    loaded = SlDetrImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.box_type == "horizontal" and loaded.max_detections == 123 and not loaded.do_normalize
    assert loaded.size.shortest_edge == 640
    SlDetrConfig().save_pretrained(tmp_path)
    AutoImageProcessor.register(SlDetrConfig, image_processor_classes={"torchvision": SlDetrImageProcessor},
                                exist_ok=True)
    auto = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto) is SlDetrImageProcessor and auto.to_dict() == processor.to_dict()


def test_do_flags_and_pil_input():
    from PIL import Image

    image = Image.fromarray(np.full((50, 80, 3), 255, dtype=np.uint8))
    raw = SlDetrImageProcessor(do_resize=False, do_normalize=False, do_pad=False)(image, return_tensors="pt")
    assert raw["pixel_values"].shape == (1, 3, 50, 80) and "pixel_mask" not in raw
    assert torch.allclose(raw["pixel_values"], torch.ones(1))
    norm = SlDetrImageProcessor(do_resize=False)(image, return_tensors="pt")["pixel_values"]
    assert torch.allclose(norm[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224,
                                                                                                        0.225]))


@pytest.mark.parametrize(("annotation", "message"), [
    ({"annotations": []}, r"annotations\[0\] has no 'image_id'"),
    ({"image_id": 1}, r"annotations\[0\]\['annotations'\] must be a list"),
    ({"image_id": 1, "annotations": [{"polygon": [1, 2, 3, 4, 5, 6, 7], "category_id": 0}]},
     r"\['annotations'\]\[0\]\['polygon'\] must have 8 numbers"),
    ({"image_id": 1, "annotations": [{"bbox": [1, 1, 5, 5], "category_id": 0},
                                     {"rbox": [1, 1, float("nan"), 5, 0], "category_id": 0}]},
     r"\['annotations'\]\[1\]\['rbox'\] contains NaN"),
    ({"image_id": 1, "annotations": [{"bbox": [1, 1, 5, 5]}]}, r"\['annotations'\]\[0\]\['category_id'\]"),
    ({"image_id": 1, "annotations": [{"bbox": [1, 1, 5, 5], "category_id": -1}]}, r"must be >= 0"),
    ({"image_id": 1, "annotations": [{"bbox": [1, 1, -5, 5], "category_id": 1}]}, r"negative width"),
    ({"image_id": 1, "annotations": [{"category_id": 1}]}, r"has no geometry"),
    ("not a dict", r"annotations\[0\] must be a dict"),
])
def test_bad_annotations(annotation, message):
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        SlDetrImageProcessor()(image, annotations=[annotation])


def test_bad_calls():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="2 image"):
        SlDetrImageProcessor()([image, image], annotations=[{"image_id": 0, "annotations": []}])
    with pytest.raises(ValueError, match="aspect ratio"):
        SlDetrImageProcessor(size={"height": 64, "width": 64})(image, annotations={"image_id": 0, "annotations": []})
    with pytest.raises(ValueError, match="box_type"):
        SlDetrImageProcessor(box_type="obb")
    with pytest.raises(ValueError, match="pad_size"):
        SlDetrImageProcessor(do_resize=False, pad_size={"height": 10, "width": 10})(image)


def test_stock_object_detection_pipeline():
    """transformers' unchanged pipeline("object-detection") runs with this processor and reads xyxy boxes."""
    from PIL import Image
    from transformers import PretrainedConfig, PreTrainedModel, pipeline

    class TinyDetector(PreTrainedModel):
        config_class = PretrainedConfig
        main_input_name = "pixel_values"

        def __init__(self, config):
            super().__init__(config)
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, pixel_values, pixel_mask=None, **kwargs):
            batch, device = pixel_values.shape[0], pixel_values.device  # pipeline() may have moved us to a GPU
            logits = torch.tensor([[[5.0, -5.0], [-5.0, -5.0]]], device=device).expand(batch, -1, -1) * self.scale
            boxes = torch.tensor([[[0.5, 0.25, 0.5, 0.25, math.pi / 2], [0.1, 0.1, 0.1, 0.1, 0.0]]], device=device)
            return ModelOutput(logits=logits, pred_boxes=boxes.expand(batch, -1, -1))

    model = TinyDetector(PretrainedConfig(id2label={0: "ship", 1: "plane"}))
    detector = pipeline("object-detection", model=model, image_processor=SlDetrImageProcessor())
    out = detector(Image.fromarray(np.zeros((200, 400, 3), dtype=np.uint8)), threshold=0.5)
    # Box (200, 50, 200, 50, pi/2) in pixels: its hull is 50 wide and 200 high around (200, 50).
    assert out == [{"score": pytest.approx(float(torch.sigmoid(torch.tensor(5.0))), abs=1e-4), "label": "ship",
                    "box": {"xmin": 175, "ymin": -50, "xmax": 225, "ymax": 150}}]


def test_integral_float_category_ids_are_accepted_and_fractions_rejected():
    """albumentations 2.x returns float class ids (1.0); transformers' DETR processors cast them (issue 10 item 6)."""
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    objects = [{"bbox": [4, 4, 10, 8], "category_id": 1.0}, {"bbox": [20, 10, 8, 8], "category_id": np.float32(3.0)},
               {"bbox": [30, 20, 6, 6], "category_id": torch.tensor(2.0)}, {"bbox": [1, 1, 4, 4], "category_id": 0}]
    labels = SlDetrImageProcessor(box_type="horizontal")(image, annotations={"image_id": 0, "annotations": objects},
                                                          return_tensors="pt")["labels"][0]
    assert labels["class_labels"].tolist() == [1, 3, 2, 0] and labels["class_labels"].dtype == torch.int64
    for bad in (1.5, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match=r"\['category_id'\] must be an integer"):
            SlDetrImageProcessor()(image, annotations={"image_id": 0, "annotations": [
                {"bbox": [4, 4, 10, 8], "category_id": bad}]})


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1"])
def test_pil_images_of_any_mode_are_converted_to_rgb(mode):
    """Grayscale / RGBA / palette PIL images give the pixels of their RGB conversion (no broadcast error)."""
    from PIL import Image

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    processor = SlDetrImageProcessor(size={"shortest_edge": 30, "longest_edge": 40})
    out = processor(image, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 30, 40)
    torch.testing.assert_close(out, processor(image.convert("RGB"), return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize(("dtype", "mode"), [(np.uint16, "I;16"), (np.int32, "I"), (np.float32, "F")])
def test_high_depth_images_are_scaled_by_their_range(dtype, mode):
    """A 12-bit image in a 16-bit PNG (values 1000..4000) keeps its contrast; convert("RGB") made it white."""
    from PIL import Image

    from sl_detr_hf.image_processing_sl_detr import to_rgb_image

    values = np.linspace(1000, 4000, 30 * 40).reshape(30, 40).astype(dtype)
    image = Image.fromarray(values)
    assert image.mode == mode
    rgb = np.asarray(to_rgb_image(image))
    expected = np.round((values.astype(np.float64) - 1000) * 255 / 3000)
    assert rgb.shape == (30, 40, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0].astype(np.float64) - expected).max() <= 1.0
    assert rgb.min() == 0 and rgb.max() == 255
    pixels = SlDetrImageProcessor(do_resize=False, do_normalize=False)(image, return_tensors="pt")["pixel_values"]
    assert pixels.min() == 0.0 and pixels.max() == 1.0  # not all white


def test_transformers_object_detection_example_collate_path():
    """The collate path of transformers' examples/pytorch/object-detection/run_object_detection.py, unchanged in
    spirit: COCO annotations with float class ids (as albumentations 2.x returns them) -> this processor
    (fixed-size pad, pixel_mask dropped) -> a dataset's with_transform -> its collate_fn -> the model's loss."""
    import datasets
    from _tiny_sl_detr import random_image, tiny_model

    def format_image_annotations_as_coco(image_id, categories, areas, bboxes):
        annotations = [{"image_id": image_id, "category_id": category, "iscrowd": 0, "area": area,
                        "bbox": list(bbox)} for category, area, bbox in zip(categories, areas, bboxes)]
        return {"image_id": image_id, "annotations": annotations}

    def augment_and_transform_batch(examples, image_processor, return_pixel_mask=False):
        images, annotations = [], []
        for image_id, image, objects in zip(examples["image_id"], examples["image"], examples["objects"]):
            images.append(np.array(image.convert("RGB")))
            categories = [float(c) for c in objects["category"]]  # what albumentations 2.x hands back
            annotations.append(format_image_annotations_as_coco(image_id, categories, objects["area"],
                                                                objects["bbox"]))
        result = image_processor(images=images, annotations=annotations, return_tensors="pt")
        if not return_pixel_mask:
            result.pop("pixel_mask", None)
        return result

    def collate_fn(batch):
        data = {"pixel_values": torch.stack([x["pixel_values"] for x in batch]),
                "labels": [x["labels"] for x in batch]}
        if "pixel_mask" in batch[0]:
            data["pixel_mask"] = torch.stack([x["pixel_mask"] for x in batch])
        return data

    rows = {"image_id": [0, 1], "image": [random_image(60, 90, seed=1), random_image(80, 50, seed=2)],
            "objects": [{"bbox": [[10.0, 10.0, 20.0, 15.0], [40.0, 20.0, 30.0, 25.0]], "category": [0, 2],
                         "area": [300.0, 750.0]},
                        {"bbox": [[5.0, 30.0, 12.0, 20.0]], "category": [1], "area": [240.0]}]}
    dataset = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    processor = SlDetrImageProcessor(box_type="horizontal", size={"max_height": 96, "max_width": 96},
                                     pad_size={"height": 96, "width": 96})
    dataset = dataset.with_transform(lambda batch: augment_and_transform_batch(batch, processor))
    batch = collate_fn([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 96, 96)
    assert [t["class_labels"].tolist() for t in batch["labels"]] == [[0, 2], [1]]
    model = tiny_model("horizontal").train()
    outputs = model(**batch)
    assert torch.isfinite(outputs.loss) and outputs.loss > 0


def test_normalize_per_image_hand_computed():
    """Each image to zero mean / unit std by its own statistics: a 2 x 2 grey image by hand, the same image at half
    its contrast gives the same values, and a nearly flat image is divided by the floor, not by its tiny std."""
    from sl_detr_hf.image_processing_sl_detr import MIN_IMAGE_STD

    processor = SlDetrImageProcessor(do_resize=False, normalize_per_image=True)
    grey = torch.tensor([[0, 51], [102, 153]], dtype=torch.uint8).expand(3, 2, 2)
    low_contrast = (grey // 2 + 60).to(torch.uint8)  # 60, 85, 111, 136: the same up to rounding
    flat = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    flat[:, 0, 0] = 101
    out = processor([grey, low_contrast, flat], return_tensors="pt")["pixel_values"]
    # values / 255 = 0, .2, .4, .6: mean .3, population std sqrt(.05)
    expected = torch.tensor([[-0.3, -0.1], [0.1, 0.3]]) / math.sqrt(0.05)
    torch.testing.assert_close(out[0], expected.expand(3, 2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], expected.expand(3, 2, 2), atol=2e-2, rtol=0)
    # flat: std of (1/255, 0, 0, 0) is sqrt(3) / 4 / 255, below the floor of 5 / 255
    flat_expected = (torch.tensor([[1.0, 0.0], [0.0, 0.0]]) - 0.25) / 255 / MIN_IMAGE_STD
    torch.testing.assert_close(out[2], flat_expected.expand(3, 2, 2), atol=1e-6, rtol=0)
    # the ImageNet normalization when off (the default), and the padding stays zero when on
    default = SlDetrImageProcessor(do_resize=False)(grey, return_tensors="pt")["pixel_values"][0]
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    torch.testing.assert_close(default, (grey.float() / 255 - mean) / std, atol=1e-5, rtol=0)
    padded = processor([grey, torch.full((3, 1, 1), 9, dtype=torch.uint8)], return_tensors="pt")
    assert padded["pixel_values"][1, :, 0, 0].abs().max() == 0  # one pixel: its own mean
    assert padded["pixel_values"][1, :, 1:, :].abs().max() == 0 and padded["pixel_mask"][1].sum() == 1
    # it is how `do_normalize` normalizes: without it, the rescaled values
    raw = processor(grey, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(raw, grey.float() / 255, atol=1e-6, rtol=0)


def test_normalize_per_image_is_saved_and_loaded(tmp_path):
    SlDetrImageProcessor(normalize_per_image=True).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["normalize_per_image"] is True
    assert SlDetrImageProcessor.from_pretrained(tmp_path).normalize_per_image is True
    assert SlDetrImageProcessor().normalize_per_image is False
