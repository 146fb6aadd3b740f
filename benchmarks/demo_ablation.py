"""The convergence ablation of issue 9 on the demo's data: `sl-detr demo` under one time budget per variant.

    python benchmarks/demo_ablation.py [--minutes 8] [--parallel 1] [--variants today init dn ...] [--seeds 0]

Each variant is `sl-detr demo` with `--config` overrides (the model's switches), run in its own process, in the
order given. With ``--parallel 2`` two runs go side by side, each pinned to its own CPU core with one torch
thread (`taskset`), so every run gets the same budget: one core for ``--minutes``. The table printed at the end
(and written to ``OUTPUT_DIR/ablation.json``) has steps reached and DOTA VOC07 mAP50 on the 100 validation
images for every variant and seed. The variants of deleted switches (hybrid queries, geometric sampling, matching
once per step: BENCHMARKS.md, "Removed switches") are gone with them.

"today" is the model before the DINO / RHINO parts (Deformable DETR's two-stage queries, no denoising, axis-aligned
sampling) with transformers' zero class-bias init; each following variant adds one part on top of the previous.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# the parts' chain up to rot-rhino keeps Deformable DETR's backbone rule; "backbone" then adds the demo's, and
# "qs-nms" the proposal NMS of the query selection (the chain before it pins it off)
_NO_NMS = "query_selection_nms=None"
_FROZEN = _NO_NMS + ",backbone_norm=frozen,backbone_frozen_stages=1"
_DDN = _FROZEN + ",mixed_query_selection=False,look_forward_twice=False,rotated_sampling=none"
_DN = _DDN + ",dynamic_denoising=False"
_INIT = _DDN + ",num_denoising=0"
_MQS = _FROZEN + ",look_forward_twice=False,rotated_sampling=none"
_LFT = _FROZEN + ",rotated_sampling=none"

VARIANTS: dict[str, tuple[str, str]] = {
    "today": ("", "before this work (commit 8d531bf, run from --today_checkout): Deformable DETR + angle heads"),
    "init": (_INIT, "+ Deformable DETR's head init (focal prior, zero last box layer); step cosine"),
    "time-lr": (_INIT, "+ learning rate on a wall-clock cosine (--lr_schedule time)"),
    "dn": (_DN, "+ contrastive denoising"),
    "dyn-dn": (_DDN, "+ dynamic denoising"),
    "mqs": (_MQS, "+ mixed query selection (encoder loss on top-k)"),
    "lft": (_LFT, "+ look forward twice"),
    "rot-rhino": (_FROZEN + ",rotated_sampling=rhino", "+ rotated sampling, RHINO's form"),
    "backbone": (_NO_NMS, "+ the backbone trained whole with learning batch norms"),
    "qs-nms": ("", "+ proposal NMS in the query selection (ProbIoU 0.6): the defaults"),
    "hausdorff": ("matcher_box_cost=hausdorff,geometric_cost=5", "+ RHINO's Hausdorff + KLD 5 matching cost"),
    "defaults": ("", "the demo's defaults"),
    "sync-off": ("", "the demo's defaults with the synchronized losses off (--sync False)"),
}


def _command(variant: str, seed: int, minutes: float, out: Path, threads: int, extra: list[str]) -> list[str]:
    overrides, _ = VARIANTS[variant]
    cmd = [sys.executable, "-m", "sl_detr_hf.cli", "demo", "--output_dir", str(out), "--max_minutes", str(minutes),
           "--seed", str(seed), "--threads", str(threads)]
    if overrides:
        cmd += ["--config", overrides]
    if variant == "init":
        cmd += ["--lr_schedule", "steps"]
    if variant == "sync-off":
        cmd += ["--sync", "False"]
    return cmd + extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--parallel", type=int, default=1, choices=(1, 2),
                        help="runs side by side, each pinned to one core with one thread")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--output_dir", default="outputs/ablation")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (data, model, plots)")
    parser.add_argument("--today_checkout", help="a checkout of commit 8d531bf (the model before this work), for the "
                        "'today' variant, e.g. `git worktree add /tmp/today 8d531bf`")
    parser.add_argument("demo_args", nargs="*", help="more `sl-detr demo` arguments, after --")
    args = parser.parse_args(argv)
    if "today" in args.variants and not args.today_checkout:
        parser.error("the 'today' variant needs --today_checkout (or leave it out of --variants)")
    if args.parallel > 1 and shutil.which("taskset") is None:
        parser.error("--parallel 2 needs `taskset` (util-linux) to pin each run to a core")
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    results: list[dict] = []
    threads = 1 if args.parallel > 1 else 0
    for start in range(0, len(jobs), args.parallel):
        running = []
        for slot, (variant, seed) in enumerate(jobs[start:start + args.parallel]):
            out = (root / f"{variant}-seed{seed}").resolve()
            cmd = _command(variant, seed, args.minutes, out, threads, args.demo_args)
            env = dict(os.environ)
            if variant == "today":
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.today_checkout, env.get("PYTHONPATH")]))
            if args.parallel > 1:
                cmd = ["taskset", "-c", str(slot), *cmd]
                env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            log = open(root / f"{variant}-seed{seed}.log", "w")  # closed once the run ends
            print(f"running {variant} (seed {seed}): {' '.join(cmd)}", flush=True)
            # `python -m` puts the working directory first on sys.path: run "today" from its checkout
            cwd = args.today_checkout if variant == "today" else None
            running.append((variant, seed, out.resolve(), log, time.monotonic(),
                            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)))
        for variant, seed, out, log, began, proc in running:
            code = proc.wait()
            log.close()
            row = {"variant": variant, "seed": seed, "overrides": VARIANTS[variant][0], "exit_code": code,
                   "wall_minutes": (time.monotonic() - began) / 60}
            summary_file = out / "summary.json"
            if code == 0 and summary_file.exists():
                summary = json.loads(summary_file.read_text())
                row.update(mAP50=summary["mAP50"], steps=summary["train_steps"])
            results.append(row)
            print(f"  {variant} seed {seed}: " + (f"mAP50 {row['mAP50']:.3f} after {row['steps']} steps"
                                                   if "mAP50" in row else f"FAILED (exit {code}, see its log)"),
                  flush=True)
            if not args.keep and out.exists():
                shutil.rmtree(out)
    (root / "ablation.json").write_text(json.dumps(results, indent=2))
    budget = f"{args.minutes:g} min, " + ("1 core and 1 thread per run" if args.parallel > 1 else "all cores")
    print(f"\n| variant | what | seed | steps | mAP50 ({budget}) |\n| --- | --- | --- | --- | --- |")
    for row in results:
        value = f"{row['mAP50']:.3f}" if "mAP50" in row else "failed"
        print(f"| {row['variant']} | {VARIANTS[row['variant']][1]} | {row['seed']} | {row.get('steps', '-')} "
              f"| {value} |")


if __name__ == "__main__":
    main()
