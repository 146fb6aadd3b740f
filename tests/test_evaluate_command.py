"""`sl-detr evaluate`: what the model sees. An image that fits in one patch goes in whole, as in training; a larger
one is split into patches of the model's input size."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection, SlDetrImageProcessor
from sl_detr_hf.cli import main
from sl_detr_hf.commands._common import tiny_config_kwargs


def _folder(root, sizes):
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    for k, (width, height) in enumerate(sizes):
        Image.new("RGB", (width, height), (90, 90, 90)).save(root / "images" / f"im{k}.png")
        (root / "labelTxt" / f"im{k}.txt").write_text("10 10 30 10 30 20 10 20 plane 0\n")
    return root


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(SlDetrConfig(**tiny_config_kwargs(1, {0: "plane"}, d_model=32, layers=1,
                                                                       num_queries=10)))
    model.save_pretrained(tmp_path / "model")
    SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _seen(monkeypatch) -> list[tuple[tuple[int, ...], int]]:
    """Record the ``(pixel_values shape, padded pixels)`` of every forward."""
    seen = []
    forward = SlDetrForObjectDetection.forward

    def recording(self, pixel_values, pixel_mask=None, **kwargs):
        seen.append((tuple(pixel_values.shape), int((pixel_mask == 0).sum()) if pixel_mask is not None else 0))
        return forward(self, pixel_values, pixel_mask=pixel_mask, **kwargs)

    monkeypatch.setattr(SlDetrForObjectDetection, "forward", recording)
    return seen


def _evaluate(tmp_path, model_dir, data) -> None:
    assert main(["evaluate", "--model", str(model_dir), "--data_dir", str(data), "--device", "cpu",
                 "--output_dir", str(tmp_path / "eval")]) == 0


def test_a_frame_that_fits_goes_in_whole_at_the_training_size(tmp_path, model_dir, monkeypatch):
    # a 64 x 48 frame and a model trained at 64 px: it sees the frame as training did (64 x 48, nothing padded); it
    # used to see a 1024 px patch, mostly padding, shrunk to 64 x 64 (the frame in its corner at 4 x 3 px)
    data = _folder(tmp_path / "val", [(64, 48)])
    seen = _seen(monkeypatch)
    _evaluate(tmp_path, model_dir, data)
    assert seen == [((1, 3, 48, 64), 0)]
    assert "mAP" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_a_larger_image_is_split_into_patches_of_the_model_input_size(tmp_path, model_dir, monkeypatch):
    # 100 x 80 px, patches of 64 (the model's size) with a gap of round(64 * 200 / 1024) = 12: windows at x 0 and
    # 36, y 0 and 16; each a full 64 x 64 patch (none passes the border), the model sees them at 64 x 64
    data = _folder(tmp_path / "val", [(100, 80)])
    seen = _seen(monkeypatch)
    _evaluate(tmp_path, model_dir, data)
    assert seen == [((4, 3, 64, 64), 0)]
    patches = sorted(p.name for p in (tmp_path / "eval" / "patches" / "images").iterdir())
    assert patches == ["im0__64__0___0.png", "im0__64__0___16.png", "im0__64__36___0.png", "im0__64__36___16.png"]


def test_a_gap_as_large_as_the_patch_is_refused(tmp_path, model_dir):
    data = _folder(tmp_path / "val", [(64, 48)])
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(model_dir), "--data_dir", str(data), "--device", "cpu", "--patch_size", "64",
              "--gap", "64", "--output_dir", str(tmp_path / "eval")])


def test_a_processor_with_two_edges_gets_patches_of_its_shortest_edge(tmp_path, model_dir, monkeypatch):
    # shortest 48, longest 96 (like COCO's 800 / 1333): a 48 px square is what the processor leaves as it is; a
    # longest-edge patch (96) would be shrunk to 48
    SlDetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 96}).save_pretrained(model_dir)
    data = _folder(tmp_path / "val", [(96, 72)])
    seen = _seen(monkeypatch)
    _evaluate(tmp_path, model_dir, data)
    assert seen and all(shape[-2:] == (48, 48) and padded == 0 for shape, padded in seen)


def test_evaluate_on_the_cpu_keeps_freed_memory(tmp_path, model_dir, monkeypatch):
    from sl_detr_hf.training import allocator

    applied = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: applied.append(1) or True)
    _evaluate(tmp_path, model_dir, _folder(tmp_path / "val", [(64, 48)]))
    assert applied == [1]
