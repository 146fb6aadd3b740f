"""SL-DETR matcher + criterion against transformers' Deformable DETR loss, measured side by side.

    python benchmarks/loss.py [--targets 50 200 800] [--repeat 5] [--device cpu|cuda] [--backward]

Batch of 2 images, 900 queries, 15 classes, 7 prediction layers (SL-DETR: last decoder layer + 5 auxiliary
layers + the two-stage encoder output; transformers: last decoder layer + 6 auxiliary layers, as it has no
encoder loss), N targets in every image. Same random logits and boxes for both (transformers gets the
first four coordinates). The three cases run interleaved (ABCABC...) so that machine load hits all alike.

Prints the median time of matching + losses (with ``--backward`` also the backward pass), the ratio
SL-DETR / transformers for rotated boxes (synchronized KLD, quality-aware BCE) and for horizontal ones
(synchronized GIoU), and the share of the SL-DETR rotated time spent in scipy's ``linear_sum_assignment``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from transformers import DeformableDetrConfig
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

from sl_detr_hf import matcher_sl_detr
from sl_detr_hf.configuration_sl_detr import SlDetrConfig
from sl_detr_hf.loss_sl_detr import SlDetrLoss

BATCH, QUERIES, CLASSES, LAYERS = 2, 900, 15, 7
ENC_TOKENS = QUERIES  # proposals scored by the encoder term (--enc-tokens)


def random_boxes(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(*shape, 5, generator=generator)
    boxes = torch.stack((0.05 + 0.9 * u[..., 0], 0.05 + 0.9 * u[..., 1], 0.01 + 0.09 * u[..., 2],
                         0.01 + 0.09 * u[..., 3], (u[..., 4] - 0.5) * torch.pi), dim=-1)
    return boxes.to(device)


def make_problem(n: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(LAYERS, BATCH, QUERIES, CLASSES, generator=g).to(device)
    boxes = random_boxes((LAYERS, BATCH, QUERIES), g, device)
    if ENC_TOKENS != QUERIES:  # the encoder layer (the last one) gets ENC_TOKENS proposals
        enc_logits = torch.randn(BATCH, ENC_TOKENS, CLASSES, generator=g).to(device)
        enc_boxes = random_boxes((BATCH, ENC_TOKENS), g, device)
        logits = [*logits[:-1], enc_logits]
        boxes = [*boxes[:-1], enc_boxes]
    targets = [{"class_labels": torch.randint(0, CLASSES, (n,), generator=g).to(device),
                "boxes": random_boxes((n,), g, device),
                "size": torch.tensor([1024, 1024], device=device)} for _ in range(BATCH)]
    return logits, boxes, targets


def sl_detr_step(criterion: SlDetrLoss, logits, boxes, targets, dim: int, backward: bool):
    logits = [x.clone().requires_grad_() for x in logits]
    boxes = [x[..., :dim].clone().requires_grad_() for x in boxes]
    layer = [{"logits": logits[i], "pred_boxes": boxes[i]} for i in range(LAYERS)]
    outputs = {**layer[LAYERS - 2], "auxiliary_outputs": layer[:LAYERS - 2], "enc_outputs": layer[LAYERS - 1]}
    tg = [{**t, "boxes": t["boxes"][:, :dim]} for t in targets]
    total, _ = criterion(outputs, tg)
    if backward:
        total.backward()


def transformers_step(config: DeformableDetrConfig, logits, boxes, targets, backward: bool):
    if isinstance(logits, list):  # its encoder has no loss: the last layer stands in (900 queries)
        logits, boxes = torch.stack([*logits[:-1], logits[-2]]), torch.stack([*boxes[:-1], boxes[-2]])
    logits = logits.clone().requires_grad_()
    boxes = boxes[..., :4].clone().requires_grad_()
    labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"][:, :4]} for t in targets]
    total, _, _ = DeformableDetrForObjectDetectionLoss(logits[-1], labels, logits.device, boxes[-1], config,
                                                        logits, boxes)
    if backward:
        total.backward()


def interleaved_medians(fns: dict, repeat: int, sync) -> dict[str, float]:
    """Median time of each function, run in turn (ABCABC...) so that machine load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
        sync()
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


class _LsaTimer:
    """Accumulates the time spent in scipy's linear_sum_assignment called by the SL-DETR matcher."""

    def __init__(self):
        self.seconds = 0.0
        self._orig = matcher_sl_detr.linear_sum_assignment

    def __call__(self, cost):
        start = time.perf_counter()
        out = self._orig(cost)
        self.seconds += time.perf_counter() - start
        return out

    def __enter__(self):
        matcher_sl_detr.linear_sum_assignment = self
        return self

    def __exit__(self, *exc):
        matcher_sl_detr.linear_sum_assignment = self._orig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backward", action="store_true", help="also time the backward pass")
    parser.add_argument("--enc-tokens", type=int, default=QUERIES,
                        help="proposals in the encoder term: 900 (top-k, default) or e.g. 43520 (two 1024 px "
                             "images' tokens per image: 21760, the all-token form)")
    args = parser.parse_args()
    global ENC_TOKENS
    ENC_TOKENS = args.enc_tokens
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rotated = SlDetrLoss(SlDetrConfig(num_labels=CLASSES))
    horizontal = SlDetrLoss(SlDetrConfig(num_labels=CLASSES, box_type="horizontal"))
    hf_config = DeformableDetrConfig(num_labels=CLASSES, decoder_layers=LAYERS, auxiliary_loss=True,
                                     class_cost=2, bbox_cost=5, giou_cost=2, bbox_loss_coefficient=5,
                                     giou_loss_coefficient=2, focal_alpha=0.25)
    mode = "forward + backward" if args.backward else "forward (matching + losses)"
    print(f"device={device}, torch threads={torch.get_num_threads()}, batch={BATCH}, queries={QUERIES}, "
          f"classes={CLASSES}, layers={LAYERS}, encoder proposals={ENC_TOKENS}, timing {mode}, median of {args.repeat}")
    print(f"{'targets/img':>11} | {'transformers':>12} | {'SL rotated':>10} | {'ratio':>5} | "
          f"{'SL horizontal':>13} | {'ratio':>5} | {'LSA share (rot)':>15}")
    for n in args.targets:
        logits, boxes, targets = make_problem(n, device)
        fns = {
            "hf": partial(transformers_step, hf_config, logits, boxes, targets, args.backward),
            "rot": partial(sl_detr_step, rotated, logits, boxes, targets, 5, args.backward),
            "hor": partial(sl_detr_step, horizontal, logits, boxes, targets, 4, args.backward),
        }
        med = interleaved_medians(fns, args.repeat, sync)
        t_hf, t_rot, t_hor = med["hf"], med["rot"], med["hor"]
        with _LsaTimer() as lsa:
            start = time.perf_counter()
            sl_detr_step(rotated, logits, boxes, targets, 5, args.backward)
            sync()
            share = lsa.seconds / (time.perf_counter() - start)
        print(f"{n:>11} | {t_hf * 1e3:>9.1f} ms | {t_rot * 1e3:>7.1f} ms | {t_rot / t_hf:>5.2f} | "
              f"{t_hor * 1e3:>10.1f} ms | {t_hor / t_hf:>5.2f} | {share:>14.0%}")


if __name__ == "__main__":
    main()
