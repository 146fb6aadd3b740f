"""Repeat-factor sampling for rare classes (LVIS: Gupta et al., CVPR 2019, section 4; detectron2's
`RepeatFactorTrainingSampler`, mmdetection's `ClassBalancedDataset`).

With `f(c)` the fraction of training images that contain class `c` and a threshold `t`, class `c` gets the repeat
factor `r(c) = max(1, sqrt(t / f(c)))` and an image the largest factor of its classes (1 without objects). An
epoch then holds each image `r(I)` times on average: `floor(r)` times, plus once more for about a share `frac(r)`
of the images (so that the epoch has a fixed length, see `RepeatFactorSampler`). Classes in more than a share `t` of the
images are not repeated; with `t = 0` nothing is.

On HIT-UAV's training dates, `t = 0.3`: OtherVehicle (in 2.4 % of the images) x3.5, Bicycle (18.7 %) x1.27, Car and
Person (41 % and 66 %) x1 (BENCHMARKS.md, "Rare classes: repeat-factor sampling").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["RepeatFactorSampler", "class_repeat_factors", "dataset_image_classes", "describe_repeat_factors",
           "image_repeat_factors"]


def class_repeat_factors(image_classes: Sequence[Sequence[int]], num_classes: int, threshold: float) -> np.ndarray:
    """`r(c) = max(1, sqrt(threshold / f(c)))` per class: `(num_classes,)` float64 (1 for a class in no image).

    Args:
        image_classes: for each training image, the class ids of its objects (repeats allowed).
        num_classes: the number of classes (ids `0 .. num_classes - 1`).
        threshold: `t`, a share of the images in `[0, 1]`.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"the repeat-factor threshold is a share of the images in [0, 1], got {threshold}")
    images = max(len(image_classes), 1)
    counts = np.zeros(num_classes, dtype=np.float64)
    for classes in image_classes:
        ids = np.unique(np.asarray(classes, dtype=np.int64))
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"class id out of range [0, {num_classes}): {ids.tolist()}")
        counts[ids] += 1
    share = counts / images
    factors = np.ones(num_classes, dtype=np.float64)
    present = share > 0
    factors[present] = np.maximum(1.0, np.sqrt(threshold / share[present]))
    return factors


def image_repeat_factors(image_classes: Sequence[Sequence[int]], class_factors: np.ndarray) -> np.ndarray:
    """`r(I)`: the largest repeat factor of an image's classes, 1 for an image without objects: `(N,)` float64."""
    return np.array([float(class_factors[np.asarray(classes, dtype=np.int64)].max()) if len(classes) else 1.0
                     for classes in image_classes], dtype=np.float64)


def dataset_image_classes(dataset) -> list[list[int]]:
    """Each example's `objects.category` list of a detection `datasets.Dataset`, read from its Arrow table (in the
    dataset's row order, without decoding an image)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    objects = dataset.select_columns(["objects"]).with_format("arrow")[:].column("objects").combine_chunks()
    if pa.types.is_struct(objects.type):  # the loaders' Sequence of a dict: a struct of per-image lists
        categories = objects.field("category")
    else:  # a list of per-object dicts
        categories = pa.ListArray.from_arrays(objects.offsets, pc.struct_field(objects.values, "category"))
    return [list(map(int, row)) for row in categories.to_pylist()]


class RepeatFactorSampler(Sampler[int]):
    """An epoch of exactly `round(sum(r))` indices: image `i` `floor(r_i)` times, plus once more with probability
    `frac(r_i) * K / F` (`F` the sum of the fractional parts, `K` the draws left to the epoch's length; systematic
    sampling over a random order, which draws exactly `K`), shuffled. Each image's mean count is its factor up to
    the epoch's rounding (detectron2 draws `frac(r_i)` alone and lets the epoch's length vary; `Trainer` counts
    steps by the sampler's length).

    The order depends on `seed` and the epoch (`set_epoch`, which `Trainer` / accelerate call; without it each
    `__iter__` starts the next epoch), so every process of a distributed run draws the same epoch.
    """

    def __init__(self, repeat_factors: Sequence[float] | np.ndarray, seed: int = 0) -> None:
        factors = np.asarray(repeat_factors, dtype=np.float64)
        if factors.ndim != 1 or factors.size == 0 or not np.isfinite(factors).all() or (factors < 1).any():
            raise ValueError("repeat factors must be a non-empty 1-d array of finite values >= 1")
        self.factors = torch.from_numpy(factors)
        self.whole = torch.floor(self.factors).long()
        self.length = int(round(float(factors.sum())))
        fraction = self.factors - self.whole
        self.extra = self.length - int(self.whole.sum())  # K
        # inclusion probabilities of the K extra draws: the fractional parts scaled to sum to K, at most 1 each
        self.inclusion = (fraction * (self.extra / max(float(fraction.sum()), 1e-12))).clamp(0, 1)
        self.seed = seed
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if not self._epoch_set:  # no set_epoch: the next iteration is the next epoch
            self.epoch += 1
        self._epoch_set = False
        indices = torch.repeat_interleave(torch.arange(len(self.factors)), self.whole)
        if self.extra > 0:
            order = torch.randperm(len(self.factors), generator=generator)
            ends = self.inclusion[order].cumsum(0)
            start = torch.rand((), generator=generator, dtype=ends.dtype)
            # image order[j] is drawn when a point start + n (n = 0, 1, ...) falls in its interval of the cumsum
            hits = torch.floor(ends - start) - torch.floor(ends - self.inclusion[order] - start)
            chosen = order[hits > 0]
            if chosen.numel() < self.extra:  # probabilities clipped at 1 (tiny sets): the rest by weight
                rest = self.inclusion.clone()
                rest[chosen] = 0
                more = torch.multinomial(rest + 1e-12, self.extra - chosen.numel(), replacement=False,
                                         generator=generator)
                chosen = torch.cat([chosen, more])
            indices = torch.cat([indices, chosen[:self.extra]])
        order = torch.randperm(indices.numel(), generator=generator)
        return iter(indices[order].tolist())


def describe_repeat_factors(names: Sequence[str], class_factors: np.ndarray, image_factors: np.ndarray) -> str:
    """One log line: the repeated classes and the epoch's length."""
    repeated = [f"{name} x{factor:.2f}" for name, factor in zip(names, class_factors) if factor > 1]
    return (f"repeat-factor sampling: {', '.join(repeated) or 'no class repeated'}; an epoch of "
            f"{int(round(image_factors.sum())):,} images instead of {image_factors.size:,}")

