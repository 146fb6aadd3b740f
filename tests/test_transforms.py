"""Augmentation through torchvision rotated tv_tensors: the sign convention, boxes following objects, drops."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from sl_detr_hf.data.transforms import RandomRotate90, RotatedDetectionAugment, visible_fraction
from sl_detr_hf.rotated_boxes import (
    box_iou_rotated,
    poly_to_rbox,
    rbox_to_poly,
    rboxes_from_torchvision,
    rboxes_to_torchvision,
)


def _draw(height: int, width: int, boxes: torch.Tensor) -> torch.Tensor:
    """A black image with each box filled white, ``(3, H, W)`` uint8 (drawn from ``rbox_to_poly``)."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for poly in rbox_to_poly(boxes.double()).tolist():
        draw.polygon(poly, fill=(255, 255, 255))
    return F.pil_to_tensor(image)


def _pixel_box(mask: torch.Tensor) -> torch.Tensor:
    """Centre, side lengths and le90 angle of a filled rectangle from its pixel moments (independent of us)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    pts = torch.stack((xs, ys), 1).double() + 0.5
    centre = pts.mean(0)
    cov = (pts - centre).T @ (pts - centre) / len(pts)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    major = evecs[:, 1]
    theta = math.atan2(float(major[1]), float(major[0]))
    theta = (theta + math.pi / 2) % math.pi - math.pi / 2
    w, h = (12 * evals[1]).sqrt(), (12 * evals[0]).sqrt()  # a uniform segment of length L has variance L^2/12
    return torch.tensor([centre[0], centre[1], w, h, theta], dtype=torch.float64)


def _angle_close(a: float, b: float, tol: float) -> bool:
    d = (a - b + math.pi / 2) % math.pi - math.pi / 2
    return abs(d) < tol


@pytest.mark.parametrize("degrees", [30.0, -50.0, 90.0])
def test_sign_convention_matches_torchvision_rotation(degrees):
    # Rotate an image and its box with torchvision; the rotated white rectangle measured from the pixels must
    # be the box that rboxes_from_torchvision returns, and rbox_to_poly's corners must enclose it.
    box = torch.tensor([[120.0, 90.0, 80.0, 24.0, 0.2]])
    image = _draw(200, 260, box)
    tv = rboxes_to_torchvision(box, (200, 260))
    out_image = F.rotate(tv_tensors.Image(image), degrees)
    out_box = rboxes_from_torchvision(F.rotate(tv, degrees))[0].double()
    measured = _pixel_box(out_image[0] > 127)
    torch.testing.assert_close(measured[:2], out_box[:2], atol=1.0, rtol=0)
    torch.testing.assert_close(measured[2:4], out_box[2:4], atol=2.0, rtol=0)
    assert _angle_close(float(measured[4]), float(out_box[4]), 0.02)
    # torchvision turns counter-clockwise on screen for positive degrees: theta decreases by the angle.
    assert _angle_close(float(out_box[4]), 0.2 - math.radians(degrees), 1e-4)
    # The polygon of our box equals torchvision's own corner format.
    corners = F.convert_bounding_box_format(F.rotate(tv, degrees), new_format="XYXYXYXY")
    ours = rbox_to_poly(out_box[None].float())
    torch.testing.assert_close(poly_to_rbox(corners.as_subclass(torch.Tensor).double()),
                               poly_to_rbox(ours.double()), atol=1e-3, rtol=0)


def test_flips_match_pixels():
    box = torch.tensor([[70.0, 40.0, 60.0, 16.0, 0.5]])
    image = _draw(100, 150, box)
    tv = rboxes_to_torchvision(box, (100, 150))
    for image_fn, box_fn in ((F.horizontal_flip, F.horizontal_flip), (F.vertical_flip, F.vertical_flip)):
        out = rboxes_from_torchvision(box_fn(tv))[0].double()
        measured = _pixel_box(image_fn(tv_tensors.Image(image))[0] > 127)
        torch.testing.assert_close(measured[:2], out[:2], atol=1.0, rtol=0)
        assert _angle_close(float(measured[4]), float(out[4]), 0.03)
        assert _angle_close(float(out[4]), -0.5, 1e-5)


def test_augmented_boxes_follow_their_objects():
    torch.manual_seed(0)
    boxes = torch.tensor([[60.0, 50.0, 50.0, 14.0, 0.3], [140.0, 100.0, 40.0, 20.0, -1.0]])
    image = _draw(160, 200, boxes)
    aug = RotatedDetectionAugment(rotate_prob=1.0, rotate_degrees=45, scales=(120, 200), max_size=300,
                                  brightness=0, contrast=0, saturation=0, min_visibility=0.9)
    kept_all = 0
    for _ in range(12):
        target = {"boxes": boxes, "class_labels": torch.tensor([2, 4]), "size": torch.tensor([160, 200])}
        out_image, out = aug(image, target)
        height, width = out_image.shape[-2:]
        assert out["size"].tolist() == [height, width]
        assert out["boxes"].shape[0] == out["class_labels"].shape[0]
        # Every kept box is white inside (sample its inner half) -- it still covers its object.
        for b in out["boxes"]:
            inner = b.clone()
            inner[2:4] *= 0.5
            mask = _draw(height, width, inner[None])[0] > 0
            assert float(out_image[0][mask].float().mean()) > 200
        kept_all += int(out["boxes"].shape[0] == 2)
    assert kept_all >= 6


def test_rot90_changes_canvas_and_keeps_everything():
    torch.manual_seed(1)
    boxes = torch.tensor([[20.0, 10.0, 16.0, 6.0, 0.0]])
    image = _draw(30, 50, boxes)
    out_image, out_boxes = RandomRotate90(p=1.0)(tv_tensors.Image(image), rboxes_to_torchvision(boxes, (30, 50)))
    assert out_image.shape[-2:] in ((50, 30), (30, 50))
    measured = _pixel_box(out_image[0] > 127)
    torch.testing.assert_close(measured[:2], rboxes_from_torchvision(out_boxes)[0, :2].double(), atol=1.0, rtol=0)


def test_border_rule_drops_objects():
    # visible_fraction is exact for axis-aligned cases: half of a 20 x 10 box at the left border.
    frac = visible_fraction(torch.tensor([[0.0, 50.0, 20.0, 10.0, 0.0], [50.0, 50, 20, 10, 0.7]]), 100, 100)
    torch.testing.assert_close(frac, torch.tensor([0.5, 1.0]), atol=1e-5, rtol=0)
    aug = RotatedDetectionAugment(hflip_prob=0, vflip_prob=0, rot90_prob=0, brightness=0, contrast=0,
                                  saturation=0, min_visibility=0.6)
    target = {"boxes": torch.tensor([[5.0, 50.0, 20.0, 10.0, 0.0],   # 75% visible: kept
                                     [1.0, 50.0, 20.0, 10.0, 0.0],   # 55% visible: dropped
                                     [-2.0, 50.0, 30.0, 10.0, 0.0],  # centre outside: dropped
                                     [50.0, 50.0, 20.0, 10.0, 0.0]]),
              "class_labels": torch.tensor([0, 1, 2, 3]), "difficult": torch.tensor([0, 0, 1, 1]),
              "area": torch.zeros(4), "polygon": torch.zeros(4, 8), "image_id": "x"}
    _, out = aug(torch.zeros(3, 100, 100, dtype=torch.uint8), target)
    assert out["class_labels"].tolist() == [0, 3] and out["difficult"].tolist() == [0, 1]
    torch.testing.assert_close(out["area"], torch.tensor([200.0, 200.0]))
    torch.testing.assert_close(out["polygon"], rbox_to_poly(out["boxes"]))
    assert out["image_id"] == "x"


def test_visible_fraction_matches_the_exact_intersection_for_every_box():
    # The shortcut (corners inside -> 1) must agree with the polygon intersection for boxes inside, crossing
    # and outside the frame, at every angle.
    gen = torch.Generator().manual_seed(0)
    n = 400
    boxes = torch.stack([torch.rand(n, generator=gen) * 140 - 20, torch.rand(n, generator=gen) * 100 - 10,
                         torch.rand(n, generator=gen) * 40 + 1, torch.rand(n, generator=gen) * 30 + 1,
                         (torch.rand(n, generator=gen) - 0.5) * torch.pi], dim=1)
    frame = torch.tensor([[50.0, 40.0, 100.0, 80.0, 0.0]])
    iou = box_iou_rotated(boxes.double(), frame.double())[:, 0]
    area = boxes[:, 2].double() * boxes[:, 3].double()
    expected = iou * (area + 8000.0) / (1 + iou) / area
    frac = visible_fraction(boxes, 80, 100)
    torch.testing.assert_close(frac.double(), expected, atol=1e-4, rtol=0)
    assert 0 < int((frac == 1).sum()) < n and int((frac < 1).sum()) > 50  # both paths exercised


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_zoom_scales_boxes_about_the_image_centre(factor):
    # A zoom by `factor` about the canvas centre (130, 100) moves a box's centre c to centre + factor (c - centre),
    # scales its sides and keeps its angle; the canvas is kept; the drawn rectangle is where the box says.
    boxes = torch.tensor([[110.0, 90.0, 60.0, 20.0, 0.4], [20.0, 20.0, 10.0, 6.0, 0.0]])
    image = _draw(200, 260, boxes[:1])
    aug = RotatedDetectionAugment(hflip_prob=0, vflip_prob=0, rot90_prob=0, scale_range=(factor, factor),
                                  brightness=0, contrast=0, saturation=0)
    target = {"boxes": boxes, "class_labels": torch.tensor([0, 1])}
    out_image, out = aug(image, target)
    assert out_image.shape[-2:] == (200, 260)
    centre = torch.tensor([130.0, 100.0])
    expected = torch.tensor([*(centre + factor * (boxes[0, :2] - centre)), 60 * factor, 20 * factor, 0.4])
    # zooming in pushes the second box out of the canvas (dropped); zooming out keeps it, halved
    assert out["class_labels"].tolist() == ([0, 1] if factor < 1 else [0])
    torch.testing.assert_close(out["boxes"][0], expected, atol=1e-3, rtol=0)
    measured = _pixel_box(out_image[0] > 127)
    torch.testing.assert_close(measured[:4].float(), expected[:4], atol=1.0, rtol=0.05)
    assert _angle_close(float(measured[4]), 0.4, 0.03)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_zoom_interpolates_pixels(factor):
    # a horizontal ramp of 2 grey levels a pixel, zoomed by `factor` about the centre, stays a ramp of 2 / factor a
    # pixel: bilinear resampling; nearest neighbour (torchvision's default) repeats or skips columns (steps 0, 2, 4)
    ramp = (torch.arange(100) * 2 + 20).to(torch.uint8).expand(3, 60, 100).clone()
    aug = RotatedDetectionAugment(hflip_prob=0, vflip_prob=0, rot90_prob=0, scale_range=(factor, factor),
                                  brightness=0, contrast=0, saturation=0)
    out_image, _ = aug(ramp, {"boxes": torch.zeros(0, 5), "class_labels": torch.zeros(0, dtype=torch.long)})
    steps = out_image[0, 30, 20:80].double().diff()  # inside the zoomed image for both factors
    assert abs(float(steps.mean()) - 2 / factor) < 0.1
    assert float((steps - 2 / factor).abs().max()) <= 1.0  # uint8 rounding only


def test_zoom_range_is_checked():
    with pytest.raises(ValueError, match="scale_range"):
        RotatedDetectionAugment(scale_range=(1.5, 0.5))


def test_quarter_turns_turn_the_canvas_of_an_empty_box_set():
    # torchvision's rotate leaves an empty set's canvas as it was: the zoom after the turn reads both sizes
    aug = RotatedDetectionAugment(hflip_prob=0, vflip_prob=0, rot90_prob=1.0, scale_range=(0.5, 1.5))
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out = aug(torch.zeros(3, 40, 60, dtype=torch.uint8),
                             {"boxes": torch.zeros(0, 5), "class_labels": torch.zeros(0, dtype=torch.long)})
        assert out_image.shape[-2:] in ((40, 60), (60, 40)) and out["boxes"].shape == (0, 5)
    for seed in range(6):
        torch.manual_seed(seed)
        image, boxes = RandomRotate90(p=1.0)(tv_tensors.Image(torch.zeros(3, 40, 60, dtype=torch.uint8)),
                                             rboxes_to_torchvision(torch.zeros(0, 5), (40, 60)))
        assert tuple(boxes.canvas_size) == tuple(image.shape[-2:])
