"""Exact rotated IoU: sl_detr_hf against shapely 2 on the same pairs, measured side by side.

    python benchmarks/rotated_iou.py [--n 1000] [--aligned 100000] [--repeat 5] [--device cpu|cuda]

Boxes are DOTA-like: centres uniform in a 1024 x 1024 image, sides 10-200 px, any angle. Prints, for the
pairwise N x N case and the aligned case, the median time of each, the speed ratio and the largest
absolute IoU difference. On CUDA it also times a 10k x 10k pairwise IoU (shapely is not run there).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import shapely
import torch

from sl_detr_hf.rotated_boxes import aligned_iou_rotated, box_iou_rotated, rbox_to_poly


def random_boxes(n: int, generator: torch.Generator, span: float = 1024.0) -> torch.Tensor:
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    return torch.stack((u[:, 0] * span, u[:, 1] * span, 10 + 190 * u[:, 2], 10 + 190 * u[:, 3],
                        (u[:, 4] - 0.5) * np.pi), dim=1)


def median_time(fn, repeat: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shapely_polygons(boxes: torch.Tensor) -> np.ndarray:
    return shapely.polygons(rbox_to_poly(boxes.double()).view(-1, 4, 2).numpy())


def shapely_iou(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(pa, pb))
    return inter / (shapely.area(pa) + shapely.area(pb) - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="boxes per side of the pairwise case")
    parser.add_argument("--aligned", type=int, default=100_000, help="pairs in the aligned case")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, shapely {shapely.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}, {args.dtype}")

    a, b = random_boxes(args.n, gen), random_boxes(args.n, gen)
    ad, bd = a.to(device, dtype), b.to(device, dtype)
    with torch.inference_mode():
        ours = median_time(lambda: box_iou_rotated(ad, bd), args.repeat, sync)
        iou = box_iou_rotated(ad, bd).double().cpu().numpy().ravel()
    pa, pb = shapely_polygons(a), shapely_polygons(b)
    ra, rb = np.repeat(pa, args.n), np.tile(pb, args.n)
    ref_time = median_time(lambda: shapely_iou(ra, rb), max(1, args.repeat // 2))
    ref = shapely_iou(ra, rb)
    print(f"pairwise {args.n}x{args.n}: sl_detr_hf {ours * 1e3:.1f} ms, shapely {ref_time * 1e3:.1f} ms, "
          f"speed ratio {ref_time / ours:.1f}x, max |diff| {np.abs(iou - ref).max():.2e}, "
          f"overlapping pairs {(ref > 0).mean():.1%}")

    x = random_boxes(args.aligned, gen)
    y = x.clone()
    y[:, :2] += torch.randn(args.aligned, 2, generator=gen, dtype=torch.float64) * 40
    y[:, 2:4] = random_boxes(args.aligned, gen)[:, 2:4]
    y[:, 4] = random_boxes(args.aligned, gen)[:, 4]
    xd, yd = x.to(device, dtype), y.to(device, dtype)
    with torch.inference_mode():
        ours = median_time(lambda: aligned_iou_rotated(xd, yd), args.repeat, sync)
        iou = aligned_iou_rotated(xd, yd).double().cpu().numpy()
    px, py = shapely_polygons(x), shapely_polygons(y)
    ref_time = median_time(lambda: shapely_iou(px, py), max(1, args.repeat // 2))
    ref = shapely_iou(px, py)
    print(f"aligned {args.aligned} pairs: sl_detr_hf {ours * 1e3:.1f} ms, shapely {ref_time * 1e3:.1f} ms, "
          f"speed ratio {ref_time / ours:.1f}x, max |diff| {np.abs(iou - ref).max():.2e}")

    if device.type == "cuda":
        big_a, big_b = random_boxes(10_000, gen).to(device, dtype), random_boxes(10_000, gen).to(device, dtype)
        with torch.inference_mode():
            t = median_time(lambda: box_iou_rotated(big_a, big_b), args.repeat, sync)
        print(f"pairwise 10000x10000 on {torch.cuda.get_device_name()}: {t * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
