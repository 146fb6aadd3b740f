"""Georeferenced whole scenes (issue 27): peak memory and time per tile of `sl-detr predict --tile` on a GeoTIFF read
window by window (rasterio), against today's PIL path, which decodes the whole scene.

    python benchmarks/geo_scene.py [--size 30000] [--pil-size 10000] [--tile 1024] [--overlap 200] [--batch-size 8]
                                   [--threads 1] [--skip-large] [--keep DIR]

1. Writes a synthetic ``size x size`` GeoTIFF like a satellite scene: 4 bands of 16 bits (band 4 a "near infrared"),
   UTM 33N at 0.5 m, DEFLATE in 512 x 512 blocks, nodata (0) on the left 8 % and over a corner triangle (a footprint
   edge), a few thousand oriented rectangles on a textured background (a 2,048 px motif repeated).
2. Runs ``sl-detr predict scene.tif --tile T --overlap O --bands 3,2,1 --threshold 0 --top-k 10`` in a fresh process
   with the demo model (`sl-detr demo`'s architecture, random weights: only the cost matters; 256 px input, so each
   tile is resized to 256 px) and reports its wall time, time per tile, and peak resident set (the whole process:
   Python, torch, the model, GDAL's block cache, the PNG preview), plus the GeoJSON written. ``--top-k 10`` sends 10
   boxes per tile into the merge (a busy scene), ``--threshold 0`` keeps them whatever the random scores.
3. The same command on an 8-bit RGB GeoTIFF of ``pil-size`` (which PIL can read: today's path cannot read 4 bands of
   16 bits at all) through rasterio and through PIL (rasterio hidden from the process: what a core install does),
   with ``--no-draw`` (the tiles alone) and with the PNG (rasterio: a preview of at most 4,096 px assembled from the
   tiles; PIL: the full-size scene drawn). Same tiles, same model.
4. In this process, the read alone per tile (no model, CPU time) on both files: `RasterScene.read_rgb` vs PIL's crop
   (the PIL scene decoded whole at the first crop, included), and the scene's opening (the percentile stretch).
5. A baseline: the peak resident set of a process that imports the command and loads the model.

Times are reported as wall and as CPU time (user + system of the process): on a machine shared with other jobs the
wall time measures the load, the CPU time the work.

Every run of the model uses ``--threads`` intra-op threads (default 1, as `benchmarks/export.py`: on a shared CPU
two OpenMP threads spin at barriers). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABELS = {i: f"class{i}" for i in range(15)}
BLOCK = 512
MOTIF = 2048


def demo_model_folder(folder: Path) -> Path:
    """The demo architecture with random weights (seed 0) and its 256 px processor, saved."""
    import torch

    from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection, SlDetrImageProcessor
    from sl_detr_hf.commands._common import tiny_config_kwargs

    torch.manual_seed(0)
    model = SlDetrForObjectDetection(SlDetrConfig(**tiny_config_kwargs(15, LABELS))).eval()
    processor = SlDetrImageProcessor(size={"shortest_edge": 256, "longest_edge": 256}, max_detections=100,
                                     pad_size={"height": 256, "width": 256})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def motif(seed: int = 0) -> np.ndarray:
    """``(4, MOTIF, MOTIF)`` uint16: a textured background with ~400 oriented rectangles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:MOTIF, 0:MOTIF].astype(np.float32)
    background = 900 + 250 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
    image = Image.new("RGB", (MOTIF, MOTIF))
    draw = ImageDraw.Draw(image)
    for _ in range(400):
        cx, cy = rng.uniform(0, MOTIF, 2)
        w, h, theta = rng.uniform(12, 70), rng.uniform(6, 28), rng.uniform(-np.pi / 2, np.pi / 2)
        c, s = np.cos(theta), np.sin(theta)
        corners = [(cx + c * dx - s * dy, cy + s * dx + c * dy)
                   for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
        draw.polygon(corners, fill=tuple(int(v) for v in rng.integers(1, 256, 3)))
    rgb = np.asarray(image).astype(np.float32).transpose(2, 0, 1)  # (3, M, M)
    painted = rgb.any(0)
    bands = [np.where(painted, 1500 + 40 * rgb[k], background + 60 * k) for k in range(3)]
    bands.append(np.where(painted, 3000 + 20 * rgb.mean(0), background * 2.5))  # "near infrared"
    return np.rint(np.stack(bands)).astype(np.uint16)


def write_scene(path: Path, size: int, count: int, dtype: str) -> float:
    """Write the synthetic scene (see the module docstring), block row by block row; returns seconds (0: an existing
    file of ``--keep`` with that size and type was reused)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.is_file():
        with rasterio.open(path) as existing:
            if (existing.width, existing.count, existing.dtypes[0]) == (size, count, dtype):
                return 0.0
    start = time.perf_counter()
    pattern = motif()
    if dtype == "uint8":  # the 8-bit RGB version: the same scene, scaled down
        pattern = np.clip(pattern[:3] / 40, 1, 255).astype(np.uint8)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": count, "dtype": dtype,
               "crs": "EPSG:32633", "transform": from_origin(400000.0, 5300000.0, 0.5, 0.5),
               "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "zlevel": 1}
    if dtype != "uint8":
        profile["nodata"] = 0
    columns = np.arange(size) % MOTIF
    left = int(size * 0.08)
    with rasterio.open(path, "w", **profile) as dataset:
        for y0 in range(0, size, BLOCK):
            rows = np.arange(y0, min(size, y0 + BLOCK))
            block = pattern[:count][:, rows % MOTIF][:, :, columns]
            if dtype != "uint8":
                block[:, :, :left] = 0
                x = np.arange(size)[None, :]
                block[:, (x - rows[:, None]) > int(size * 0.75)] = 0  # the top-right corner triangle
            dataset.write(block, window=Window(0, y0, size, len(rows)))
    return time.perf_counter() - start


def run_predict(args: list[str], threads: int, hide_rasterio: bool = False, code: str | None = None
                ) -> tuple[float, float, float, str]:
    """``sl-detr predict ARGS`` (or ``code``) in a fresh process: wall seconds, CPU seconds (user + system), peak
    resident set (MiB) and its stdout."""
    code = code or ("import sys\n" + ("sys.modules['rasterio'] = None\n" if hide_rasterio else "")
                    + "from sl_detr_hf.commands.predict import main\nsys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"predict failed ({status}): {stdout}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout


def baseline(model: Path, threads: int) -> None:
    """Peak resident set of a process that imports the command and loads the model, and predicts nothing."""
    code = ("import sys\nfrom sl_detr_hf.commands.predict import main\nfrom sl_detr_hf.inference import load_detector\n"
            "load_detector(sys.argv[1], device='cpu')\n")
    _, _, peak, _ = run_predict([str(model)], threads, code=code)
    print(f"  baseline: importing the command and loading the model: peak RSS {peak:.0f} MiB")


def read_per_tile(path: Path, tile: int, overlap: int, pil: bool) -> tuple[float, float, int]:
    """CPU seconds of this process to open the scene, and to read every tile (no model); tiles read."""
    from sl_detr_hf.geo import open_raster
    from sl_detr_hf.tiling import scene_pixel_limit, tile_windows

    start = time.process_time()
    if pil:
        with scene_pixel_limit(None):
            scene = Image.open(path)
    else:
        scene = open_raster(path, bands=(3, 2, 1))
    opened = time.process_time() - start
    width, height = scene.size
    windows = tile_windows(width, height, tile, overlap)
    start = time.process_time()
    with scene_pixel_limit(None):
        for window in windows[np.lexsort((windows[:, 0], windows[:, 1]))].tolist():
            _ = scene.crop(tuple(window)).convert("RGB") if pil else scene.read_rgb(window)
    seconds = time.process_time() - start
    scene.close()
    return opened, seconds, len(windows)


def measure(scene: Path, model: Path, out: Path, options: argparse.Namespace, bands: bool, hide_rasterio: bool,
            label: str, draw: bool = True) -> None:
    args = [str(scene), "--model", str(model), "--output-dir", str(out), "--device", "cpu", "--tile",
            str(options.tile), "--overlap", str(options.overlap), "--threshold", "0", "--top-k", "10",
            "--batch-size", str(options.batch_size), *(["--bands", "3,2,1"] if bands else []),
            *([] if draw else ["--no-draw"])]
    seconds, cpu, peak, stdout = run_predict(args, options.threads, hide_rasterio)
    record = json.loads((out / "predictions.json").read_text())[0]
    from sl_detr_hf.tiling import tile_windows

    tiles = len(tile_windows(record["width"], record["height"], options.tile, options.overlap))
    skipped = record.get("nodata_tiles_skipped", 0)
    geojson = out / f"{scene.stem}.geojson"
    print(f"  {label}: wall {seconds:.0f} s, CPU {cpu:.0f} s = {1000 * cpu / tiles:.0f} ms per tile ({tiles} tiles, "
          f"{skipped} all nodata skipped), peak RSS {peak:.0f} MiB, {len(record['detections'])} detections"
          + (f", GeoJSON {geojson.stat().st_size / 2**20:.1f} MiB" if geojson.is_file() else ", no GeoJSON"))
    for line in stdout.splitlines():
        if "pip install" in line:
            print(f"    printed: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=30000, help="side of the 4-band 16-bit scene (px)")
    parser.add_argument("--pil-size", type=int, default=10000, help="side of the 8-bit RGB scene for the PIL path")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true", help="only the PIL comparison")
    parser.add_argument("--keep", default=None, help="write the scenes here and keep them (default: a temp folder)")
    options = parser.parse_args()
    folder = Path(options.keep or tempfile.mkdtemp(prefix="geo_scene_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model = demo_model_folder(folder / "model")
        print(f"demo model (random weights), tile {options.tile}, overlap {options.overlap}, batch "
              f"{options.batch_size}, {options.threads} thread(s), threshold 0, top-k 10 per tile")
        baseline(model, options.threads)
        if not options.skip_large:
            scene = folder / "scene_u16.tif"
            seconds = write_scene(scene, options.size, 4, "uint16")
            raw = options.size**2 * 4 * 2 / 2**30
            print(f"\n{options.size} x {options.size} px, 4 bands uint16 ({raw:.1f} GiB decoded): written in "
                  f"{seconds:.0f} s, file {scene.stat().st_size / 2**20:.0f} MiB")
            opened, reads, tiles = read_per_tile(scene, options.tile, options.overlap, pil=False)
            print(f"  read alone (CPU): open + stretch {opened:.1f} s, {1000 * reads / tiles:.1f} ms per tile")
            measure(scene, model, folder / "out_u16", options, bands=True, hide_rasterio=False,
                    label="sl-detr predict (rasterio windows)")
        scene = folder / "scene_rgb.tif"
        seconds = write_scene(scene, options.pil_size, 3, "uint8")
        print(f"\n{options.pil_size} x {options.pil_size} px, RGB uint8 ({options.pil_size**2 * 3 / 2**20:.0f} MiB "
              f"decoded): written in {seconds:.0f} s, file {scene.stat().st_size / 2**20:.0f} MiB")
        for pil in (False, True):
            opened, reads, tiles = read_per_tile(scene, options.tile, options.overlap, pil=pil)
            print(f"  read alone (CPU), {'PIL (decoded whole at the first crop)' if pil else 'rasterio windows'}: open "
                  f"{opened:.2f} s, {1000 * reads / tiles:.1f} ms per tile")
        for draw in (False, True):
            png = "with the PNG" if draw else "--no-draw"
            measure(scene, model, folder / f"out_rgb_rasterio_{draw}", options, bands=False, hide_rasterio=False,
                    label=f"sl-detr predict (rasterio windows), {png}", draw=draw)
            measure(scene, model, folder / f"out_rgb_pil_{draw}", options, bands=False, hide_rasterio=True,
                    label=f"sl-detr predict (PIL, today's path), {png}", draw=draw)
    finally:
        if options.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
