r"""Real images: ``sl-detr train`` against Ultralytics YOLO11n-OBB and YOLO26n-OBB, same data, budget, size and machine.

Every model trains from scratch for ``--minutes`` on the same training images at ``--image_size`` and is scored by
this package's ``evaluate_dota`` on the same validation images: mAP50 (VOC07, the DOTA devkit's rules), the
COCO-rule mAP75 and mAP50:95 (rotated IoU, 101-point AP) and AP50 per class. Training images/s and inference
images/s (batch 1, pre- and post-processing included; the peers at Ultralytics' default confidence 0.25, see
`predict_yolo`) go in the same table, then SL-DETR / peer ratios (means over seeds); everything is written to
``--work/results<tag>.json`` (after each model, so a stopped run keeps what it finished).

    pip install -e ".[dev,benchmark]"      # Ultralytics >= 8.4 (its first with YOLO26), never a dependency
    python benchmarks/real_data.py                             # ../shared/data/airport-train, 15 min, 608 px
    python benchmarks/real_data.py --data DOTA_FOLDER --val_dir OTHER_DOTA_FOLDER --image_size 640
    python benchmarks/real_data.py --models sl_detr --data_format yolo_obb     # SL-DETR from the YOLO-OBB copy
    python benchmarks/real_data.py --merge A.json B.json       # one table + ratios from runs made in parallel

Models: ``--models sl_detr,peers`` (default both), ``--peers yolo11n-obb,yolo26n-obb`` (Ultralytics model yaml
names, default both; a name the installed Ultralytics does not know is skipped with a message). SL-DETR is trained
by the command the README gives for one's own data, ``sl-detr train --data_format dota --train_dir DIR
--image_size 608 --max_minutes 15 --output_dir OUT`` (``--data_format yolo_obb``: from the YOLO-OBB copy below;
``--extra`` appends options, for ablations such as ``--no_sync True``); each peer by ``YOLO("<name>.yaml")
.train(...)`` with its defaults, batch 8 as in the issue's measurement, ``pretrained=False``, ``val=False`` (its
whole budget trains) and ``time=`` for the budget. Nothing is downloaded: the yaml configs ship inside
Ultralytics, ``amp=False`` skips its AMP check (a ``yolo11n.pt`` download) and ``plots=False`` its font download;
``YOLO_OFFLINE=1`` is set (no update checks, no telemetry). The peers' detections for the mAP are taken at
``--peer_conf`` (0.01: at 0.001 an undertrained YOLO's rotated NMS hits its time limit on every image).

Validation: without ``--val_dir`` a fifth of the *source photos* is held out. Roboflow exports name each
augmented copy ``<photo>_jpg.rf.<hash>.jpg``: copies of one photo go to the same side, or the score measures
memorization. The split and the YOLO-OBB copy (images symlinked, labels normalized, ``data.yaml``) are written
once under ``--work`` in folders named by a fingerprint of the data, so runs in parallel share them safely.

The issue-24 runs (2-core machine; ``AIR`` = the airport set, split by source photo, 608 px; ``HIT`` = HIT-UAV,
640 px: ``HIT_TRAIN`` and ``HIT_VALID`` are DOTA folders of its training capture dates without 20210123 and of
20210123 alone (the dataset's rotated XML annotations written as DOTA labels, split by each XML's ``<folder>``,
its capture date); bash, from the
repository root):

    AIR=""; W=outputs/real_data
    HIT="--data $HIT_TRAIN --val_dir $HIT_VALID --image_size 640"
    # (a) one core each, side by side: core 0 SL-DETR (then the sync-off ablation, same length as the peers'
    #     core), core 1 the two peers one after the other; then one table. M=15: 1 h per set; M=60: 4 h per set.
    for M in 15 60; do for S in AIR HIT; do
      OMP_NUM_THREADS=1 taskset -c 0 sh -c "python benchmarks/real_data.py ${!S} --minutes $M --seeds 0 1 \
          --models sl_detr --tag _${S}_${M}m_sl && python benchmarks/real_data.py ${!S} --minutes $M --seeds 0 1 \
          --models sl_detr --extra '--no_sync True' --tag _${S}_${M}m_nosync" &
      OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/real_data.py ${!S} --minutes $M --seeds 0 1 \
          --models peers --tag _${S}_${M}m_peers
      wait
      python benchmarks/real_data.py --merge $W/results_${S}_${M}m_{sl,nosync,peers}.json --tag _${S}_${M}m
    done; done
    # (b) both cores, one model after the other (SL-DETR, YOLO11n-OBB, YOLO26n-OBB per seed): M=15: 1.5 h per
    #     set; M=60: 6 h per set.
    for M in 15 60; do for S in AIR HIT; do
      python benchmarks/real_data.py ${!S} --minutes $M --seeds 0 1 --tag _${S}_${M}m_2core
    done; done
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "airport-train"
DEFAULT_PEERS = "yolo11n-obb,yolo26n-obb"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VAL_FRACTION = 0.2


def source_photo(name: str) -> str:
    """The photo an exported image comes from: Roboflow's ``<photo>_jpg.rf.<hash>`` -> ``<photo>``; else the stem."""
    stem = Path(name).stem
    return stem.split("_jpg.rf.")[0].split("_png.rf.")[0]


def fingerprint(*folders: Path, extra: object = None) -> str:
    """A short hash of the folders' image and label files (names, sizes, modification times) and ``extra``."""
    digest = hashlib.sha1(repr(extra).encode())
    for folder in folders:
        digest.update(str(folder.resolve()).encode())
        for sub in ("images", "labelTxt", "classes.txt"):
            path = folder / sub
            entries = sorted(path.iterdir()) if path.is_dir() else [path] if path.exists() else []
            for entry in entries:
                stat = entry.stat()
                digest.update(f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:10]


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(folder)`` into a temporary folder renamed into place unless it exists: runs in
    parallel on the same ``--work`` (one core each) never see a half-written folder."""
    if target.is_dir():
        return target
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another run finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def split_by_source(data: Path, out: Path, val_fraction: float = VAL_FRACTION, seed: int = 0) -> tuple[Path, Path]:
    """Symlink ``data``'s images and labels into ``out/train`` and ``out/valid``, whole source photos per side
    (``classes.txt``, if any, into both)."""
    images = sorted(p for p in (data / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    by_source: dict[str, list[Path]] = defaultdict(list)
    for image in images:
        by_source[source_photo(image.name)].append(image)
    sources = sorted(by_source)
    random.Random(seed).shuffle(sources)
    num_val = max(1, round(len(sources) * val_fraction))
    sides = {"valid": sources[:num_val], "train": sources[num_val:]}
    for side, names in sides.items():
        for sub in ("images", "labelTxt"):
            (out / side / sub).mkdir(parents=True, exist_ok=True)
        if (data / "classes.txt").is_file() and not (out / side / "classes.txt").exists():
            (out / side / "classes.txt").symlink_to((data / "classes.txt").resolve())
        for source in names:
            for image in by_source[source]:
                label = data / "labelTxt" / f"{image.stem}.txt"
                for src, dst in ((image, out / side / "images" / image.name),
                                 (label, out / side / "labelTxt" / label.name)):
                    if src.exists() and not dst.exists():
                        dst.symlink_to(src.resolve())
    print(f"split by source photo: {len(sides['train'])} photos / "
          f"{sum(len(by_source[s]) for s in sides['train'])} images train, {len(sides['valid'])} photos / "
          f"{sum(len(by_source[s]) for s in sides['valid'])} images valid", flush=True)
    return out / "train", out / "valid"


def ground_truth(val_dir: Path, class_names: list[str]):
    from sl_detr_hf.data import load_dota

    dataset = load_dota(val_dir, class_names=class_names)
    truths = [{"image_id": row["image_id"],
               "polygons": np.asarray(row["objects"]["polygon"], np.float32).reshape(-1, 8),
               "labels": np.asarray(row["objects"]["category"], np.int64),
               "difficult": np.asarray(row["objects"]["difficult"], np.int64)}
              for row in dataset]
    paths = {p.stem: p for p in (val_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return truths, [paths[t["image_id"]] for t in truths]


def _finite(value: float) -> float | None:
    """``None`` for NaN (a class without counted objects), so that the results file is strict JSON."""
    value = float(value)
    return None if math.isnan(value) else value


def score(detections: list[dict], truths: list[dict], class_names: list[str]) -> dict:
    """``evaluate_dota``'s figures for the table: mAP50 (VOC07, DOTA's), COCO-rule mAP75 / mAP50:95, per class
    AP50 / AP75 / AP50:95 (by name) and mAP50:95 by object size."""
    from sl_detr_hf.evaluation import evaluate_dota

    result = evaluate_dota(detections, truths, num_classes=len(class_names), class_names=class_names)
    by_name = {key: {name: _finite(ap) for name, ap in result[f"{key}_by_name"].items()}
               for key in ("AP", "AP75", "AP50_95")}
    return {"mAP50": _finite(result["mAP"]), "mAP75": _finite(result["mAP75"]),
            "mAP50_95": _finite(result["mAP50_95"]), "AP50": by_name["AP"], "AP75": by_name["AP75"],
            "AP50_95": by_name["AP50_95"],
            "mAP50_95_by_size": {size: _finite(ap) for size, ap in result["mAP_by_size"].items()}}


# ------------------------------------------------------------------------------------------------- SL-DETR


def train_sl_detr(train_dir: Path, out: Path, minutes: float, image_size: int, seed: int, extra: list[str],
                  data_format: str = "dota") -> dict:
    command = [sys.executable, "-m", "sl_detr_hf.cli", "train", "--data_format", data_format,
               "--train_dir", str(train_dir), "--image_size", str(image_size), "--max_minutes", str(minutes),
               "--output_dir", str(out), "--seed", str(seed), "--save_strategy", "no", *extra]
    print("$", " ".join(command), flush=True)
    shutil.rmtree(out, ignore_errors=True)  # a finished run there would be refused, not retrained
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    log_path = out.parent / f"{out.name}.log"  # not with_suffix: a tag such as "_lr1.5e-3" holds dots
    with open(log_path, "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"`sl-detr train` failed (exit {done.returncode}); its output: {log_path}")
    wall = time.monotonic() - start
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = next(h["train_runtime"] for h in state["log_history"] if "train_runtime" in h)
    steps, batch = int(state["global_step"]), int(state["train_batch_size"])
    return {"steps": steps, "batch": batch, "train_images": steps * batch, "train_seconds": runtime,
            "wall_seconds": wall, "train_images_per_s": steps * batch / runtime}


def predict_sl_detr(model_dir: Path, images: list[Path]) -> tuple[list[dict], float]:
    from PIL import Image

    from sl_detr_hf import SlDetrForObjectDetection, SlDetrImageProcessor

    model = SlDetrForObjectDetection.from_pretrained(model_dir).eval()
    processor = SlDetrImageProcessor.from_pretrained(model_dir)
    detections, seconds = [], 0.0
    with torch.inference_mode():
        for i, path in enumerate(images):
            image = Image.open(path).convert("RGB")
            start = time.perf_counter()
            inputs = processor(images=[image], return_tensors="pt")
            outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
            result = processor.post_process_object_detection(outputs, threshold=0.001,
                                                             target_sizes=[(image.height, image.width)])[0]
            if i > 0:  # the first call warms up
                seconds += time.perf_counter() - start
            detections.append({"image_id": path.stem, "rboxes": result["rboxes"], "scores": result["scores"],
                               "labels": result["labels"]})
    return detections, (len(images) - 1) / max(seconds, 1e-9)


# ------------------------------------------------------------------------------------------------- peers


def peer_label(name: str) -> str:
    """``yolo11n-obb`` -> ``YOLO11n-OBB``."""
    return re.sub(r"^yolo", "YOLO", name).replace("-obb", "-OBB")


def available_peers(names: list[str]) -> list[str] | None:
    """The peers the installed Ultralytics builds as OBB models from its bundled yaml (no download; others are
    skipped with a message), or ``None`` when Ultralytics is missing."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or telemetry; nothing here needs the network
    try:
        import ultralytics
        from ultralytics import YOLO
    except ImportError:
        print("Ultralytics is not installed: `pip install -e \".[benchmark]\"` (or pass --models sl_detr)",
              file=sys.stderr)
        return None
    found = []
    for name in names:
        try:
            task = YOLO(f"{name}.yaml", verbose=False).task
        except Exception as error:  # any failure to build: this Ultralytics lacks the model
            print(f"skipping peer {name}: Ultralytics {ultralytics.__version__} cannot build {name}.yaml "
                  f"({type(error).__name__}: {error}); a newer Ultralytics may have it", file=sys.stderr, flush=True)
            continue
        if task != "obb":
            print(f"skipping peer {name}: {name}.yaml is a {task!r} model, not an oriented-box (obb) one",
                  file=sys.stderr, flush=True)
            continue
        found.append(name)
    return found


def to_yolo_obb(split_dirs: dict[str, Path], out: Path, class_names: list[str], final: Path | None = None) -> Path:
    """A YOLO-OBB copy of DOTA folders in ``out`` (images symlinked, labels normalized, an image without a label
    file gets an empty one), with its ``data.yaml`` (whose ``path:`` is ``final``, where ``out`` will be moved)."""
    from PIL import Image

    from sl_detr_hf.data import parse_dota_label_file

    index = {name: i for i, name in enumerate(class_names)}
    for side, folder in split_dirs.items():
        (out / "images" / side).mkdir(parents=True, exist_ok=True)
        (out / "labels" / side).mkdir(parents=True, exist_ok=True)
        for image in sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            link = out / "images" / side / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
            width, height = Image.open(image).size
            label = folder / "labelTxt" / f"{image.stem}.txt"
            objects = parse_dota_label_file(label, class_names, log=False)[0] if label.exists() else []
            lines = []
            for obj in objects:
                if obj.class_name in index:
                    xy = np.asarray(obj.polygon, np.float64).reshape(4, 2) / (width, height)
                    lines.append(f"{index[obj.class_name]} " + " ".join(f"{v:.6f}" for v in xy.clip(0, 1).ravel()))
            (out / "labels" / side / f"{image.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {json.dumps(name)}" for i, name in enumerate(class_names))
    yaml = out / "data.yaml"
    yaml.write_text(f"path: {(final or out).resolve()}\ntrain: images/train\nval: images/valid\nnames:\n{names}\n")
    return (final or out) / "data.yaml"


def train_yolo(name: str, data_yaml: Path, out: Path, minutes: float, image_size: int, seed: int
               ) -> tuple[Path, dict]:
    from ultralytics import YOLO

    model = YOLO(f"{name}.yaml")
    counter = {"images": 0, "steps": 0, "start": None, "end": None}

    def on_train_batch_start(trainer):
        if counter["start"] is None:
            counter["start"] = time.monotonic()

    def on_train_batch_end(trainer):
        counter["images"] += int(trainer.batch_size)  # the last batch of an epoch may hold fewer
        counter["steps"] += 1
        counter["end"] = time.monotonic()

    model.add_callback("on_train_batch_start", on_train_batch_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    start = time.monotonic()
    model.train(data=str(data_yaml), imgsz=image_size, time=minutes / 60, epochs=1000, batch=8, device="cpu",
                seed=seed, pretrained=False, amp=False, val=False, plots=False, project=str(out.parent),
                name=out.name, exist_ok=True, verbose=False)
    wall = time.monotonic() - start
    seconds = (counter["end"] or 0) - (counter["start"] or 0)
    weights = out / "weights" / "last.pt"
    return weights, {"steps": counter["steps"], "batch": 8, "train_images": counter["images"],
                     "train_seconds": seconds, "wall_seconds": wall,
                     "train_images_per_s": counter["images"] / max(seconds, 1e-9)}


def predict_yolo(weights: Path, images: list[Path], image_size: int, conf: float) -> tuple[list[dict], float]:
    """Detections for the mAP (at ``conf``; Ultralytics' own validation uses 0.001) and the inference images/s,
    timed in a second pass at Ultralytics' default ``conf=0.25``: at a low confidence its rotated NMS over
    thousands of candidates dominates (about 1 s per image on one core), which no deployment pays."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    detections = []
    for path in images:
        obb = model.predict(str(path), imgsz=image_size, conf=conf, max_det=300, device="cpu", verbose=False)[0].obb
        detections.append({"image_id": path.stem, "polygons": obb.xyxyxyxy.reshape(-1, 8).cpu().numpy(),
                           "scores": obb.conf.cpu().numpy(), "labels": obb.cls.cpu().numpy().astype(np.int64)})
    seconds = 0.0
    for i, path in enumerate(images):
        start = time.perf_counter()
        model.predict(str(path), imgsz=image_size, device="cpu", verbose=False)
        if i > 0:  # the first call warms up
            seconds += time.perf_counter() - start
    return detections, (len(images) - 1) / max(seconds, 1e-9)


# ------------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"


def print_table(rows: list[dict]) -> None:
    """One line per model and seed: mAP50, mAP75, mAP50:95, AP50 per class, training and inference images/s."""
    classes = list(dict.fromkeys(name for row in rows for name in row["AP50"]))
    widths = [min(max(len(name), 6), 12) for name in classes]
    model_width = max([len("model"), *(len(row["model"]) for row in rows)])
    setting_width = max([len("set"), *(len(row["set"]) for row in rows)])
    print(f"\n{'model':{model_width}s} {'set':{setting_width}s} {'seed':>4s} {'mAP50':>6s} {'mAP75':>6s} "
          f"{'50:95':>6s} " + " ".join(f"{name[:w]:>{w}s}" for name, w in zip(classes, widths))
          + f" {'train img/s':>11s} {'infer img/s':>11s}")
    for row in rows:
        print(f"{row['model']:{model_width}s} {row['set']:{setting_width}s} {row['seed']:4d} "
              f"{_fmt(row['mAP50'], 6)} {_fmt(row['mAP75'], 6)} {_fmt(row['mAP50_95'], 6)} "
              + " ".join(_fmt(row["AP50"].get(name), w) for name, w in zip(classes, widths))
              + f" {row['train_images_per_s']:11.2f} {row['inference_images_per_s']:11.2f}")
    print("(mAP50: VOC07, DOTA's rules; mAP75, 50:95: COCO rules, rotated IoU; per class: AP50 VOC07)")


def ratios(rows: list[dict]) -> list[dict]:
    """SL-DETR / each peer, means over seeds, per setting (data, minutes, image size)."""
    keys = ("mAP50", "mAP75", "mAP50_95", "train_images_per_s", "inference_images_per_s")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["set"], row["model"])].append(row)
    mean = {group: {k: float(np.mean([r[k] if r[k] is not None else np.nan for r in rs])) for k in keys}
            | {"seeds": sorted(r["seed"] for r in rs), "kind": rs[0]["kind"]} for group, rs in groups.items()}
    out = []
    for (setting, ours), a in mean.items():
        if a["kind"] != "sl_detr":
            continue
        for (peer_setting, peer), b in mean.items():
            if b["kind"] == "peer" and peer_setting == setting:
                out.append({"set": setting, "model": ours, "peer": peer, "seeds": a["seeds"],
                            "peer_seeds": b["seeds"], **{f"{k}": a[k] for k in keys},
                            **{f"peer_{k}": b[k] for k in keys},
                            **{f"x_{k}": _ratio(a[k], b[k]) for k in keys}})
    return out


def _ratio(a: float, b: float) -> float:
    """``a / b``; ``inf`` for ``a > 0 = b``, ``nan`` for ``0 / 0``."""
    return a / b if b else (float("inf") if a else float("nan"))


def print_ratios(table: list[dict]) -> None:
    def x(value: float) -> str:
        return "n/a" if math.isnan(value) else f"x{value:.2f}"

    for r in table:
        print(f"\n{r['model']} / {r['peer']} on {r['set']} (means over seeds {r['seeds']} / {r['peer_seeds']}): "
              f"mAP50 {r['mAP50']:.3f} / {r['peer_mAP50']:.3f} ({x(r['x_mAP50'])}), "
              f"mAP50:95 {r['mAP50_95']:.3f} / {r['peer_mAP50_95']:.3f} ({x(r['x_mAP50_95'])}), "
              f"training images/s {x(r['x_train_images_per_s'])}, "
              f"inference images/s {x(r['x_inference_images_per_s'])}")


def write_results(path: Path, config: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
             for r in ratios(rows)]
    path.write_text(json.dumps({"config": config, "rows": rows, "ratios": table}, indent=2))


def merge(files: list[Path], out: Path) -> int:
    """One table and the ratios from the results of runs made in parallel (``--merge``)."""
    rows, configs = [], []
    for file in files:
        data = json.loads(file.read_text())
        rows += data["rows"]
        configs.append({"file": str(file), **data["config"]})
    print_table(rows)
    print_ratios(ratios(rows))
    write_results(out, {"merged": configs}, rows)
    print(f"\nwritten: {out}")
    return 0


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DOTA-format folder (images/, labelTxt/)")
    parser.add_argument("--val_dir", type=Path, default=None, help="a separate validation folder (else split)")
    parser.add_argument("--work", type=Path, default=Path("outputs/real_data"), help="outputs, results<tag>.json")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each model")
    parser.add_argument("--image_size", type=int, default=608)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", default="sl_detr,peers", help="comma-separated: sl_detr, peers")
    parser.add_argument("--peers", default=DEFAULT_PEERS, help="comma-separated Ultralytics OBB model yaml names")
    parser.add_argument("--peer_conf", type=float, default=0.01, help="the peers' confidence for the mAP")
    parser.add_argument("--data_format", choices=("dota", "yolo_obb"), default="dota",
                        help="what SL-DETR trains from: the DOTA folder, or the YOLO-OBB copy the peers train from")
    parser.add_argument("--extra", default="", help="options appended to `sl-detr train` (quoted, space-separated)")
    parser.add_argument("--tag", default="", help="name suffix of this run's output folders and results file")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                        help="print one table and the ratios from these results files (no training)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.work / f"results{args.tag or '_merged'}.json")
    for folder, option in ((args.data, "--data"), (args.val_dir, "--val_dir")):
        if folder is not None and not (folder / "images").is_dir():
            print(f"no DOTA-format folder at {folder} (images/ missing); pass {option}"
                  + (" (the real data of ../shared/data is not on this machine)" if folder == DEFAULT_DATA else ""),
                  file=sys.stderr)
            return 2
    alias = {"yolo": "peers"}  # the name before there were several peers
    models = [alias.get(m.strip(), m.strip()) for m in args.models.split(",") if m.strip()]
    if unknown := sorted(set(models) - {"sl_detr", "peers"}):
        parser.error(f"--models: unknown {unknown}; choose from sl_detr, peers")
    peers: list[str] = []
    if "peers" in models:
        peers = available_peers([p.strip() for p in args.peers.split(",") if p.strip()])
        if peers is None or not (peers or "sl_detr" in models):
            print("no model to train" if peers is not None else "", file=sys.stderr)
            return 2

    args.work.mkdir(parents=True, exist_ok=True)
    if args.val_dir is None:
        split = args.work / f"split_{args.data.name}_{fingerprint(args.data, extra=VAL_FRACTION)}"
        build_once(split, lambda tmp: split_by_source(args.data, tmp))
        train_dir, val_dir = split / "train", split / "valid"
    else:
        train_dir, val_dir = args.data, args.val_dir

    from sl_detr_hf.data import load_dota

    class_names = list(load_dota(train_dir).features["objects"]["category"].feature.names)
    truths, val_images = ground_truth(val_dir, class_names)
    yolo_data = None
    if peers or args.data_format == "yolo_obb":
        yolo_data = args.work / f"yolo_{args.data.name}_{fingerprint(train_dir, val_dir, extra=class_names)}"
        build_once(yolo_data, lambda tmp: to_yolo_obb({"train": train_dir, "valid": val_dir}, tmp, class_names,
                                                      final=yolo_data))
    setting = f"{args.data.name}{'' if args.val_dir is None else '->' + args.val_dir.name} " \
              f"{args.minutes:g}min {args.image_size}px"
    config = {"data": str(args.data), "val_dir": str(args.val_dir or val_dir), "classes": class_names,
              "validation_images": len(val_images), "minutes": args.minutes, "image_size": args.image_size,
              "seeds": args.seeds, "models": models, "peers": peers, "peer_conf": args.peer_conf,
              "data_format": args.data_format, "extra": args.extra, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d %H:%M")}
    if peers:
        import ultralytics

        config["ultralytics"] = ultralytics.__version__
    print(f"classes {class_names}; {len(val_images)} validation images; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}; models {models}, peers {peers}", flush=True)
    results = args.work / f"results{args.tag}.json"
    rows: list[dict] = []
    common = {"set": setting, "minutes": args.minutes, "image_size": args.image_size}
    for seed in args.seeds:
        if "sl_detr" in models:
            out = args.work / f"sl_detr_seed{seed}{args.tag}"
            sl_train_dir = train_dir if args.data_format == "dota" else yolo_data / "images" / "train"
            train = train_sl_detr(sl_train_dir, out, args.minutes, args.image_size, seed, args.extra.split(),
                                  args.data_format)
            detections, infer = predict_sl_detr(out, val_images)
            label = " ".join(["SL-DETR", *(["yolo_obb"] if args.data_format == "yolo_obb" else []), args.extra])
            rows.append({"model": label.strip(), "kind": "sl_detr", "seed": seed, **common,
                         **score(detections, truths, class_names), "inference_images_per_s": infer, **train})
            print(json.dumps(rows[-1]), flush=True)
            write_results(results, config, rows)
        for peer in peers:
            out = (args.work / f"{peer}_seed{seed}{args.tag}").resolve()
            weights, train = train_yolo(peer, yolo_data / "data.yaml", out, args.minutes, args.image_size, seed)
            detections, infer = predict_yolo(weights, val_images, args.image_size, args.peer_conf)
            rows.append({"model": peer_label(peer), "kind": "peer", "seed": seed, **common,
                         **score(detections, truths, class_names), "inference_images_per_s": infer, **train})
            print(json.dumps(rows[-1]), flush=True)
            write_results(results, config, rows)
    if not rows:
        print("nothing was run (no model left to train)", file=sys.stderr)
        return 2
    print_table(rows)
    print_ratios(ratios(rows))
    print(f"\nwritten: {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
