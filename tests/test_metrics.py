"""DetectionMetrics: the structures Trainer hands to compute_metrics, and a real Trainer.evaluate run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
from sl_detr_hf.training.metrics import DetectionMetrics, select_detection_outputs

NUM_CLASSES, QUERIES = 3, 10


def _labels(box_type: str, n_images: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        objs = []
        for _ in range(int(rng.integers(1, 5))):
            cx, cy, bw, bh = rng.uniform(60, 140), rng.uniform(60, 140), rng.uniform(10, 50), rng.uniform(10, 50)
            geom = ({"rbox": [cx, cy, bw, bh, rng.uniform(-1.5, 1.5)]} if box_type == "rotated"
                    else {"bbox": [cx, cy, bw, bh]})
            objs.append({**geom, "category_id": int(rng.integers(NUM_CLASSES)), "difficult": int(rng.random() < 0.2)})
        images.append(np.zeros((h, w, 3), dtype=np.uint8))
        annotations.append({"image_id": i, "annotations": objs})
    proc = SlDetrImageProcessor(box_type=box_type, size={"shortest_edge": 256, "longest_edge": 320})
    return proc(images=images, annotations=annotations, return_tensors="pt")["labels"]


def _outputs(labels: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Perfect predictions of a batch: (logits (B, Q, C), pred_boxes (B, Q, D))."""
    dim = labels[0]["boxes"].shape[-1]
    logits = torch.full((len(labels), QUERIES, NUM_CLASSES), -8.0)
    boxes = torch.full((len(labels), QUERIES, dim), 0.05)
    if dim == 5:
        boxes[..., 4] = 0.0
    for b, t in enumerate(labels):
        n = len(t["class_labels"])
        boxes[b, :n], logits[b, torch.arange(n), t["class_labels"]] = t["boxes"], 8.0
    return logits, boxes


def _numpy(labels: list[dict]) -> list[dict]:
    return [{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in labels]


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_structures_trainer_produces(box_type):
    labels = _labels(box_type, 6)
    batches = [labels[:4], labels[4:]]
    outs = [_outputs(b) for b in batches]
    metric = DetectionMetrics(id2label={0: "plane", 1: "ship", 2: "car"})
    key = "mAP" if box_type == "rotated" else "AP"
    # eval_do_concat_batches=False: list of per-batch output tuples (loss_dict first, extra outputs after).
    preds = [({"loss_ce": np.float32(1.0)}, lg.numpy(), bx.numpy(), np.zeros((len(lg), QUERIES, 4)))
             for lg, bx in outs]
    res = metric(EvalPrediction(predictions=preds, label_ids=[_numpy(b) for b in batches]))
    assert res[key] == pytest.approx(1.0)
    assert {k for k in res if k.startswith("AP_")} >= {f"AP_{n}" for n in ("plane", "ship", "car")
                                                      if any(n == m for m in ("plane", "ship", "car"))} - {"AP_"}
    # One batch (or everything concatenated when there was a single batch): a flat tuple.
    lg, bx = (torch.cat(x) for x in zip(*outs))
    assert metric(EvalPrediction(predictions=(lg, bx), label_ids=labels))[key] == pytest.approx(1.0)
    # batch_eval_metrics=True: per-batch calls, the result at the last one.
    assert metric(EvalPrediction(predictions=outs[0], label_ids=batches[0]), compute_result=False) == {}
    assert metric(EvalPrediction(predictions=outs[1], label_ids=batches[1]), compute_result=True)[key] == \
        pytest.approx(1.0)
    # A worse prediction lowers the score: drop all detections of the second batch.
    worse = (outs[1][0] - 20, outs[1][1])
    low = metric(EvalPrediction(predictions=[outs[0], worse], label_ids=batches))
    assert low[key] < 0.9


def test_difficult_and_names():
    labels = _labels("rotated", 4, seed=3)
    logits, boxes = _outputs(labels)
    res = DetectionMetrics(id2label={0: "a", 1: "b", 2: "c"})(EvalPrediction(predictions=(logits, boxes),
                                                                               label_ids=labels))
    assert res["mAP"] == pytest.approx(1.0) and res["mRecall"] == pytest.approx(1.0)
    assert all(not math.isnan(v) for v in res.values())
    coco_keys = {"map_75", "map_50_95", "map_small", "map_medium", "map_large"}
    assert set(res) - {"mAP", "mRecall", "num_images", "num_objects"} - coco_keys <= {"AP_a", "AP_b", "AP_c"}
    assert set(res) >= coco_keys and res["map_75"] == res["map_50_95"] == 1.0
    assert res["num_images"] == 4
    assert res["num_objects"] == sum(len(t["class_labels"]) for t in labels)


def test_concatenated_labels_are_rejected():
    labels = _labels("rotated", 4)
    logits, boxes = _outputs(labels)
    # What nested_concat makes of two batches of two label dicts: two merged dicts.
    merged = [{k: np.concatenate([np.atleast_1d(a[k].numpy()), np.atleast_1d(b[k].numpy())]) for k in a}
              for a, b in zip(labels[:2], labels[2:])]
    with pytest.raises(ValueError, match="select_detection_outputs"):
        DetectionMetrics()(EvalPrediction(predictions=(logits, boxes), label_ids=merged))
    with pytest.raises(ValueError, match="logits"):
        DetectionMetrics()(EvalPrediction(predictions=(np.zeros((2, 3)),), label_ids=labels))
    with pytest.raises(ValueError, match="orig_size"):
        DetectionMetrics()(EvalPrediction(predictions=(logits, boxes), label_ids=[{"boxes": 1}] * 4))


def test_select_detection_outputs():
    labels = _labels("rotated", 3, seed=5)
    logits, boxes = _outputs(labels)
    out = select_detection_outputs(({"a": torch.ones(())}, logits, boxes, torch.zeros(3, QUERIES, 256)), labels)
    assert out["logits"] is logits and out["pred_boxes"] is boxes
    assert out["gt"].shape == (3, max(len(t["class_labels"]) for t in labels), 7)
    assert torch.equal(out["gt_sizes"], torch.stack([t["orig_size"] for t in labels]).float())
    # Packed ground truth survives the Trainer's -100 padding; label_ids are then not needed.
    padded = {k: torch.cat((v, torch.full((3, 2, 7), -100.0)), 1) if k == "gt" else v for k, v in out.items()}
    res = DetectionMetrics()(EvalPrediction(predictions=padded, label_ids=None))
    assert res["mAP"] == pytest.approx(1.0)
    # Imperfect predictions: the packed and the label-dict routes give the same numbers.
    noisy = boxes + 0.01 * torch.randn(boxes.shape, generator=torch.Generator().manual_seed(0))
    noisy[..., 2:4] = noisy[..., 2:4].abs()
    logits = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    packed = select_detection_outputs((logits, noisy), labels)
    metric = DetectionMetrics(ignore_difficult=False)
    via_pack = metric(EvalPrediction(predictions=packed, label_ids=None))
    via_labels = metric(EvalPrediction(predictions=(logits, noisy), label_ids=labels))
    assert via_pack == pytest.approx(via_labels) and 0 < via_pack["mAP"] < 1
    with pytest.raises(ValueError):
        select_detection_outputs((torch.zeros(2, 3),), None)


@pytest.mark.slow
def test_trainer_evaluate(tmp_path):
    """Trainer.evaluate with a model that predicts its labels perfectly gives mAP 1."""
    from torch.utils.data import Dataset
    from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments
    from transformers.utils import ModelOutput

    labels = _labels("rotated", 5, seed=7)

    class Data(Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {"pixel_values": torch.zeros(3, 8, 8), "labels": labels[i]}

    class Oracle(PreTrainedModel):
        config_class = PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values, labels=None):
            logits, boxes = _outputs(labels)
            return ModelOutput(loss=self.w.sum() + 1.0, loss_dict={"loss_ce": torch.tensor(1.0)}, logits=logits,
                               pred_boxes=boxes, last_hidden_state=torch.zeros(len(labels), QUERIES, 16))

    def collate(items):
        return {"pixel_values": torch.stack([x["pixel_values"] for x in items]), "labels": [x["labels"] for x in items]}

    def run(concat: bool, select: bool) -> dict:
        args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[],
                                 eval_do_concat_batches=concat, remove_unused_columns=False,
                                 label_names=["labels"], use_cpu=True)
        trainer = Trainer(model=Oracle(PretrainedConfig()), args=args, eval_dataset=Data(), data_collator=collate,
                          compute_metrics=DetectionMetrics(),
                          preprocess_logits_for_metrics=select_detection_outputs if select else None)
        return trainer.evaluate()

    assert run(concat=True, select=True)["eval_mAP"] == pytest.approx(1.0)
    assert run(concat=False, select=True)["eval_mAP"] == pytest.approx(1.0)
    # Without packing, accelerate slices the label tensors of the last (shorter) batch: detected.
    with pytest.raises(ValueError, match="truncated"):
        run(concat=False, select=False)


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_images_without_objects_are_evaluated(box_type):
    """A patch with no objects (common in split DOTA) packs to padding rows; the mAP counts only the others."""
    labels = _labels(box_type, 3, seed=7)
    empty = SlDetrImageProcessor(box_type=box_type, size={"shortest_edge": 256, "longest_edge": 320})(
        images=[np.zeros((240, 300, 3), dtype=np.uint8)], annotations=[{"image_id": 9, "annotations": []}],
        return_tensors="pt")["labels"]
    labels = [labels[0], empty[0], labels[1], labels[2]]
    logits, boxes = _outputs(labels)
    packed = select_detection_outputs((logits, boxes), labels)
    assert packed["gt"].shape == (4, max(len(t["class_labels"]) for t in labels), 7)
    assert (packed["gt"][1, :, 5] == -1).all()  # only padding rows for the empty image
    res = DetectionMetrics()(EvalPrediction(predictions=packed, label_ids=None))
    assert res["num_images"] == 4
    assert res["num_objects"] == sum(len(t["class_labels"]) for t in labels)
    assert res["mAP" if box_type == "rotated" else "AP"] == pytest.approx(1.0)


def test_coco_rule_keys_match_pycocotools_on_upright_boxes():
    """Angle-0 boxes: the rotated route's map_* (our COCO rules) equal the horizontal route's (pycocotools)."""
    rotated = _labels("rotated", 6, seed=11)
    for t in rotated:
        t["boxes"][:, 4] = 0.0
    horizontal = [{**t, "boxes": t["boxes"][:, :4].clone()} for t in rotated]
    logits, boxes = _outputs(rotated)
    gen = torch.Generator().manual_seed(3)
    boxes[..., :4] = (boxes[..., :4] * (1 + 0.08 * torch.randn(boxes[..., :4].shape, generator=gen))).abs()
    logits = logits + 2 * torch.randn(logits.shape, generator=gen)
    rot = DetectionMetrics(ignore_difficult=False)(EvalPrediction(predictions=(logits, boxes), label_ids=rotated))
    hor = DetectionMetrics()(EvalPrediction(predictions=(logits, boxes[..., :4]), label_ids=horizontal))
    keys = ["map_75", "map_50_95", "map_small", "map_medium", "map_large"]
    assert [rot[k] for k in keys] == pytest.approx([hor[k] for k in keys], abs=1e-9)
    assert hor["map_50_95"] == hor["AP"] and 0 < rot["map_50_95"] < rot["mAP"] < 1
    assert rot["map_large"] == -1.0  # no object of 96 x 96 pixels or more: undefined, as in COCO
