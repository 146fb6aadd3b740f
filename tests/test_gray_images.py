"""Grayscale images (thermal, SAR, panchromatic) go through the training augmentation as one channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_sl_detr import write_grey_dota
from PIL import Image

from sl_detr_hf.data import RotatedDetectionAugment, load_dota
from sl_detr_hf.data.copy_paste import CopyPaste
from sl_detr_hf.data.images import open_image
from sl_detr_hf.data.transforms import OtherRowsAugment
from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor, to_rgb_image
from sl_detr_hf.training import prepare_dataset


def _grey(height: int = 30, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def test_gray_keeps_one_channel_for_every_single_channel_mode():
    grey = _grey()
    stored_as_rgb = Image.fromarray(np.stack([grey] * 3, axis=-1))
    for image, expected in [(Image.fromarray(grey), grey), (stored_as_rgb, grey),
                            (Image.fromarray(grey).convert("LA"), grey),
                            (Image.fromarray(grey > 127), np.where(grey > 127, 255, 0))]:
        out = to_rgb_image(image, gray=True)
        assert out.mode == "L" and (np.asarray(out) == expected).all()
        assert to_rgb_image(image).mode == "RGB"  # the default is unchanged
    values = np.linspace(1000, 4000, 30 * 40).reshape(30, 40).astype(np.uint16)  # 12 bits in a 16-bit PNG
    wide = Image.fromarray(values)
    assert (np.asarray(to_rgb_image(wide, gray=True)) == np.asarray(to_rgb_image(wide))[..., 0]).all()


def test_gray_leaves_colour_images_in_rgb():
    colour = np.stack([_grey(seed=0), _grey(seed=0), _grey(seed=1)], axis=-1)  # blue differs
    image = Image.fromarray(colour)
    assert to_rgb_image(image, gray=True) is image
    palette = Image.fromarray(colour).convert("P")
    assert to_rgb_image(palette, gray=True).mode == "RGB"


def test_open_image_with_gray(tmp_path):
    grey = _grey()
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "thermal.png")
    assert open_image(tmp_path / "thermal.png").mode == "RGB"
    out = open_image({"path": str(tmp_path / "thermal.png"), "bytes": None}, gray=True)
    assert out.mode == "L" and (np.asarray(out) == grey).all()


@pytest.mark.parametrize("seed", range(6))
def test_the_augmentation_of_one_channel_equals_that_of_three(seed):
    """Same draws, same boxes; the pixels within two grey levels: torchvision's contrast and saturation take a
    three-channel grey image through its luma (0.2989 + 0.587 + 0.114 = 0.9999, truncated to uint8), one level
    darker each, which a single channel skips."""
    grey = torch.from_numpy(_grey(48, 64, seed))[None]
    target = {"boxes": torch.tensor([[20.0, 16.0, 12.0, 6.0, 0.3], [40.0, 30.0, 10.0, 10.0, 0.0]]),
              "class_labels": torch.tensor([0, 1])}
    augment = RotatedDetectionAugment()
    torch.manual_seed(seed)
    one, one_target = augment(grey, target)
    torch.manual_seed(seed)
    three, three_target = augment(grey.expand(3, -1, -1).clone(), target)
    assert one.shape[0] == 1 and three.shape[0] == 3 and one.shape[1:] == three.shape[1:]
    torch.testing.assert_close(one_target["boxes"], three_target["boxes"])
    difference = one.int() - three.int()
    assert difference.abs().max() <= 2 and difference.float().abs().mean() <= 1


def test_common_channels_turns_grey_to_three_only_beside_colour():
    grey, colour = torch.zeros((1, 4, 5), dtype=torch.uint8), torch.ones((3, 4, 5), dtype=torch.uint8)
    same = [grey, grey.clone()]
    assert all(a is b for a, b in zip(OtherRowsAugment.common_channels(same), same))
    out = OtherRowsAugment.common_channels([grey, colour])
    assert [tuple(image.shape) for image in out] == [(3, 4, 5), (3, 4, 5)] and out[1] is colour


def test_copy_paste_between_a_grey_and_a_colour_image():
    source = torch.zeros((3, 30, 30), dtype=torch.uint8)
    source[0, 13:17, 13:17] = 200  # a red object on black
    box = {"boxes": torch.tensor([[15.0, 15.0, 6.0, 6.0, 0.0]]), "class_labels": torch.tensor([1]),
           "difficult": torch.tensor([0])}
    empty = {"boxes": torch.zeros((0, 5)), "class_labels": torch.zeros(0, dtype=torch.long),
             "difficult": torch.zeros(0, dtype=torch.long)}
    grey_image = torch.zeros((1, 60, 60), dtype=torch.uint8)
    torch.manual_seed(0)
    out, target = CopyPaste(lambda i: (source, box), 1, prob=1.0)(grey_image, empty)
    assert out.shape == (3, 60, 60) and target["class_labels"].tolist() == [1]
    cx, cy = (int(v) for v in target["boxes"][0, :2])
    assert out[0, cy, cx] == 200 and out[1, cy, cx] == 0  # the colour came along
    torch.manual_seed(0)
    out, _ = CopyPaste(lambda i: (grey_image[:, :30, :30], empty), 1, prob=1.0)(source, box)
    assert out.shape == (3, 30, 30)


def test_a_grey_dataset_is_augmented_as_one_channel_and_fed_to_the_model_as_three(tmp_path):
    write_grey_dota(tmp_path / "d", 3, (96, 64), ["10 10 30 10 30 24 10 24 plane 0"])  # grey stored as RGB PNGs
    raw = load_dota(tmp_path / "d", class_names=["plane"])
    processor = SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, max_detections=10)
    augment = RotatedDetectionAugment()
    seen: list[int] = []
    call = augment.__call__

    class Spy:
        turns_quarter = augment.turns_quarter

        def __call__(self, image, target):
            seen.append(len(image.getbands()) if isinstance(image, Image.Image) else image.shape[0])
            return call(image, target)

    for copy_paste in (0.0, 1.0):
        seen.clear()
        dataset = prepare_dataset(raw, processor, augment=Spy(), copy_paste=copy_paste)
        pixels = dataset[1]["pixel_values"]
        assert seen == [1] and pixels.shape[0] == 3
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in (processor.image_mean, processor.image_std))
        levels = pixels * std + mean  # the three channels of a grey image are equal again
        torch.testing.assert_close(levels[0], levels[1])
        torch.testing.assert_close(levels[0], levels[2])
    assert prepare_dataset(raw, processor)[1]["pixel_values"].shape[0] == 3  # no augmentation: as before


def test_a_mosaic_keeps_grey_images_one_channel_and_mixes_grey_with_colour_as_three():
    from sl_detr_hf.data.mosaic import Mosaic

    box = {"boxes": torch.tensor([[20.0, 20.0, 8.0, 8.0, 0.0]]), "class_labels": torch.tensor([0])}
    grey = torch.full((1, 40, 40), 100, dtype=torch.uint8)
    colour = torch.zeros((3, 40, 40), dtype=torch.uint8)
    colour[2] = 250  # blue
    torch.manual_seed(0)
    out, target = Mosaic(lambda i: (grey, box), 5, prob=1.0)(grey, box)
    assert out.shape == (1, 40, 40) and len(target["boxes"]) == 4
    torch.manual_seed(0)
    out, _ = Mosaic(lambda i: (colour, box), 5, prob=1.0)(grey, box)  # the first quarter grey, three blue
    assert out.shape == (3, 40, 40)
    assert ((out[0] == 100) & (out[1] == 100) & (out[2] == 100)).any()  # the grey quarter, three equal channels
    assert ((out[0] == 0) & (out[1] == 0) & (out[2] == 250)).any()  # the blue ones
