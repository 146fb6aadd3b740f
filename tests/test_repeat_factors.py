"""Repeat-factor sampling for rare classes (`sl_detr_hf/data/repeat_factors.py`): LVIS's factors on hand-made
sets, the sampler's epochs (length, every image's expected count, determinism per seed and epoch), the factors read
from a dataset's Arrow table in its row order, and `sl-detr train --repeat_factor_threshold`."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sl_detr_hf.cli import main
from sl_detr_hf.data import load_dota, make_synthetic_dota
from sl_detr_hf.data.repeat_factors import (
    RepeatFactorSampler,
    class_repeat_factors,
    dataset_image_classes,
    image_repeat_factors,
)

# six images: class 0 in one (share 1/6), class 1 in four (2/3), class 2 in one; one image without objects
CLASSES = [[0, 0, 1], [1], [1], [1], [], [2]]


def test_factors_hand_computed():
    factors = class_repeat_factors(CLASSES, 3, threshold=0.5)
    # r(c) = max(1, sqrt(0.5 / f(c))): sqrt(3) for the classes in one image of six, 1 for the class in four
    np.testing.assert_allclose(factors, [math.sqrt(3), 1.0, math.sqrt(3)])
    # an image takes its classes' largest factor (image 0 holds classes 0 and 1); no objects: 1
    np.testing.assert_allclose(image_repeat_factors(CLASSES, factors), [math.sqrt(3), 1, 1, 1, 1, math.sqrt(3)])
    np.testing.assert_allclose(class_repeat_factors(CLASSES, 4, threshold=0.0), [1, 1, 1, 1])  # off; class 3 absent
    np.testing.assert_allclose(class_repeat_factors(CLASSES, 3, threshold=1.0), [math.sqrt(6), math.sqrt(1.5),
                                                                                 math.sqrt(6)])


def test_bad_thresholds_and_class_ids_are_refused():
    with pytest.raises(ValueError, match=r"share of the images in \[0, 1\]"):
        class_repeat_factors(CLASSES, 3, threshold=1.5)
    with pytest.raises(ValueError, match="class id out of range"):
        class_repeat_factors([[0, 3]], 3, threshold=0.5)
    with pytest.raises(ValueError, match="finite values >= 1"):
        RepeatFactorSampler([1.0, 0.5])


@settings(max_examples=30, deadline=None)
@given(factors=st.lists(st.floats(1.0, 4.0), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_an_epoch_holds_each_image_floor_or_ceil_of_its_factor(factors, seed):
    sampler = RepeatFactorSampler(factors, seed=seed)
    epoch = list(sampler)
    assert len(epoch) == len(sampler) == round(sum(factors))
    counts = Counter(epoch)
    for index, factor in enumerate(factors):
        assert math.floor(factor) <= counts[index] <= math.ceil(factor)


def test_the_mean_count_over_epochs_is_the_factor():
    factors = [1.0, 1.25, 1.5, 2.75, 3.0]
    sampler = RepeatFactorSampler(factors, seed=3)
    counts = np.zeros(len(factors))
    epochs = 4000
    for _ in range(epochs):  # without set_epoch each iteration is the next epoch
        counts += np.bincount(list(sampler), minlength=len(factors))
    # sum(factors) = 9.5 rounds to an epoch of 10: 2 draws beyond the whole parts (8), each image drawn with its
    # fractional part scaled to sum to 2: 0.25, 0.5, 0.75 of 1.5 -> 1/3, 2/3, 1
    extra = 10 - sum(math.floor(f) for f in factors)
    fractions = np.array([f - math.floor(f) for f in factors])
    expected = np.floor(factors) + extra * fractions / fractions.sum()
    np.testing.assert_allclose(counts / epochs, expected, atol=0.03)


def test_the_same_seed_and_epoch_give_the_same_order():
    factors = np.linspace(1, 3, 40)
    a, b = RepeatFactorSampler(factors, seed=7), RepeatFactorSampler(factors, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    first = list(a)
    assert first == list(b)  # two processes of a distributed run draw the same epoch
    a.set_epoch(3)
    assert list(a) != first
    a.set_epoch(2)
    assert list(a) == first  # a resumed run replays its epoch
    assert list(RepeatFactorSampler(factors, seed=8)) != list(RepeatFactorSampler(factors, seed=7))


def test_image_classes_read_from_a_dota_folder_in_row_order(tmp_path):
    folder = make_synthetic_dota(tmp_path / "train", num_images=6, image_size=64, seed=2, max_objects=4)
    dataset = load_dota(folder)
    expected = [list(row["category"]) for row in dataset["objects"]]
    assert dataset_image_classes(dataset) == expected
    assert sum(map(len, expected)) > 0
    picked = dataset.select([4, 1, 1])  # an indices mapping: the rows as the dataset gives them
    assert dataset_image_classes(picked) == [expected[4], expected[1], expected[1]]


def test_train_samples_by_repeat_factors(tmp_path, monkeypatch, caplog):
    from sl_detr_hf.training import SlDetrTrainer

    folder = make_synthetic_dota(tmp_path / "train", num_images=6, image_size=64, seed=1, max_objects=3)
    samplers = []
    original = SlDetrTrainer._get_train_sampler
    monkeypatch.setattr(SlDetrTrainer, "_get_train_sampler",
                        lambda self, *a: samplers.append(original(self, *a)) or samplers[-1])
    with caplog.at_level(logging.INFO, logger="sl_detr_hf"):
        assert main(["train", "--data_format", "dota", "--train_dir", str(folder), "--max_steps", "2",
                     "--output_dir", str(tmp_path / "run"), "--save_strategy", "no", "--eval_strategy", "no",
                     "--repeat_factor_threshold", "1.0", "--image_size", "64", "--config",
                     "d_model=32,num_denoising=10", "--num_queries", "10", "--use_cpu", "--report_to", "none"]) == 0
    sampler = samplers[0]
    assert isinstance(sampler, RepeatFactorSampler) and sampler.seed == 42  # Trainer's default seed
    dataset = load_dota(folder)
    names = dataset.features["objects"]["category"].feature.names
    classes = dataset_image_classes(dataset)
    expected = image_repeat_factors(classes, class_repeat_factors(classes, len(names), 1.0))
    torch.testing.assert_close(sampler.factors, torch.from_numpy(expected))
    assert "repeat-factor sampling:" in caplog.text
    with pytest.raises(SystemExit, match="repeat_factor_threshold"):
        main(["train", "--data_format", "dota", "--train_dir", str(folder), "--max_steps", "1",
              "--output_dir", str(tmp_path / "bad"), "--repeat_factor_threshold", "2", "--use_cpu",
              "--report_to", "none"])


@pytest.mark.parametrize("layout", ["struct_of_lists", "list_of_structs"])
def test_image_classes_read_from_either_objects_layout(layout):
    import datasets

    label = datasets.ClassLabel(names=["a", "b", "c"])
    if layout == "struct_of_lists":  # the DOTA / YOLO-OBB loaders' Sequence of a dict
        features = datasets.Features({"objects": {"category": datasets.List(label),
                                                  "x": datasets.List(datasets.Value("float32"))}})
        rows = [{"category": [0, 2], "x": [1.0, 2.0]}, {"category": [], "x": []}, {"category": [1], "x": [0.0]}]
    else:  # a list of per-object dicts
        features = datasets.Features({"objects": datasets.List({"category": label, "x": datasets.Value("float32")})})
        rows = [[{"category": 0, "x": 1.0}, {"category": 2, "x": 2.0}], [], [{"category": 1, "x": 0.0}]]
    dataset = datasets.Dataset.from_dict({"objects": rows}, features=features)
    assert dataset_image_classes(dataset) == [[0, 2], [], [1]]
    assert dataset_image_classes(dataset.select([2, 0])) == [[1], [0, 2]]


def test_the_trainer_refuses_factors_of_another_length(tmp_path):
    from _tiny_sl_detr import tiny_model
    from transformers import TrainingArguments

    from sl_detr_hf.training import SlDetrTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", data_seed=5)
    rows = [{"pixel_values": torch.zeros(3, 8, 8)}] * 3
    with pytest.raises(ValueError, match="2 repeat factors for 3 training examples"):
        SlDetrTrainer(model=tiny_model(), args=args, train_dataset=rows, repeat_factors=np.ones(2))
    trainer = SlDetrTrainer(model=tiny_model(), args=args, train_dataset=rows, repeat_factors=np.array([1, 2, 1.5]))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, RepeatFactorSampler) and sampler.seed == 5 and len(sampler) == 4  # round(4.5) = 4
