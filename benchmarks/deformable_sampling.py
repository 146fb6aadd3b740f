r"""The deformable attention's sampling: transformers' grid_sample form against the gather form
(`sl_detr_hf/deformable_sampling_sl_detr.py`), side by side at the sizes of `sl-detr train`'s model.

One call of the operator at the encoder's size (every token a query) and at the decoder's (the queries), forward
alone (inference) and forward + backward (training), float32 and bf16 values (under CPU autocast, as the model
runs them); the two forms take turns, the median
of ``--repeat`` calls each, and the ratio grid_sample / gather (> 1: the gather is faster).

    python benchmarks/deformable_sampling.py                                   # 640 x 512 frames, batch 1 and 4
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/deformable_sampling.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

from sl_detr_hf.deformable_sampling_sl_detr import multi_scale_deformable_sampling


def case(batch: int, queries: int, shapes: list[tuple[int, int]], heads: int, channels: int, points: int,
         dtype: torch.dtype, grad: bool):
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, channels).to(dtype).requires_grad_(grad)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2).requires_grad_(grad)
    weights = torch.rand(batch, queries, heads, len(shapes), points).requires_grad_(grad)
    return value, locations, weights


def timed(function, inputs, grad: bool, repeat: int) -> list[float]:
    bf16 = inputs[0].dtype == torch.bfloat16  # as in the model: under autocast (grid_sample runs in float32)

    def once() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = function(*inputs)
        if grad:
            out.float().sum().backward()
        return time.perf_counter() - start

    once()  # warm-up
    return [once() for _ in range(repeat)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--strides", default="16,32", help="the encoder levels' strides")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100, help="decoder queries")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [(-(-args.height // s), -(-args.width // s)) for s in map(int, args.strides.split(","))]
    tokens = sum(h * w for h, w in shapes)
    reference = MultiScaleDeformableAttention()
    spatial = torch.tensor(shapes)
    start = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])

    def grid_sample_form(value, locations, weights):
        return reference(value, spatial, shapes, start, locations, weights, 64)

    def gather_form(value, locations, weights):
        return multi_scale_deformable_sampling(value, shapes, locations, weights)

    print(f"levels {shapes} ({tokens} tokens), {args.heads} heads x {args.d_model // args.heads} channels, "
          f"{args.points} points; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'where':<8} {'batch':>5} {'dtype':>8} {'pass':>9} {'grid_sample ms':>15} {'gather ms':>10} {'ratio':>6}")
    for batch in map(int, args.batches.split(",")):
        for where, queries in (("encoder", tokens), ("decoder", args.queries)):
            for dtype in (torch.float32, torch.bfloat16):
                for grad in (False, True):
                    inputs = case(batch, queries, shapes, args.heads, args.d_model // args.heads, args.points,
                                  dtype, grad)
                    times = {"grid": [], "gather": []}
                    for _ in range(2):  # alternate the forms
                        times["grid"] += timed(grid_sample_form, inputs, grad, args.repeat // 2)
                        times["gather"] += timed(gather_form, inputs, grad, args.repeat // 2)
                    grid, gather = (statistics.median(times[k]) * 1e3 for k in ("grid", "gather"))
                    print(f"{where:<8} {batch:>5} {str(dtype)[6:]:>8} {'fwd+bwd' if grad else 'forward':>9} "
                          f"{grid:>15.2f} {gather:>10.2f} {grid / gather:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
