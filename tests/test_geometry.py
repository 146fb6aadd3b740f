"""The geometry modules (`sl_detr_hf/geometry_*.py`): the same numbers as the code they replaced, one public API
re-exported by `rotated_boxes`, no private name imported across modules, and only torch and siblings imported (they
ship as ``trust_remote_code`` files).

`fixtures/geometry/previous_numbers.pt` holds inputs and outputs of main 91dbc22's functions (`rotated_boxes.py`, the
costs in `matcher_sl_detr.py`, ProbIoU in `query_selection_sl_detr.py`, the ONNX post-processing), written by
`fixtures/geometry/make_previous_numbers.py`. Where the arithmetic is unchanged the numbers must be equal bit for
bit (float32 to a few units in the last place, which vary with the processor: `_same`); two formulas were merged
with a different rounding order (the corners of the Hausdorff cost; the rotated covariance / precision inside
`pairwise_kld`), and those agree to a few units in the last place.
"""

from __future__ import annotations

import ast
import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from sl_detr_hf import rotated_boxes
from sl_detr_hf.configuration_sl_detr import SlDetrConfig
from sl_detr_hf.export_onnx import OnnxPostProcess
from sl_detr_hf.geometry_conversions import (
    denormalize_rboxes,
    hbox_to_rbox,
    poly_to_rbox,
    rbox_corners,
    rbox_to_hbox,
    rbox_to_poly,
    regularize_rboxes,
    wrap_angle_range,
)
from sl_detr_hf.geometry_distances import l1_coords, pairwise_hausdorff
from sl_detr_hf.geometry_gaussian import gwd, kld, kld_to_loss, pairwise_kld, rbox_to_gaussian
from sl_detr_hf.geometry_nms import batched_nms_rotated, nms_rotated
from sl_detr_hf.geometry_overlaps import aligned_iou_rotated, box_iou_rotated, generalized_iou, prob_iou
from sl_detr_hf.matcher_sl_detr import SlDetrHungarianMatcher
from sl_detr_hf.query_selection_sl_detr import pairwise_prob_iou

PACKAGE = Path(__file__).resolve().parents[1] / "sl_detr_hf"
GEOMETRY_MODULES = ("conversions", "overlaps", "gaussian", "distances", "nms")


@pytest.fixture(scope="module")
def previous():
    return torch.load(Path(__file__).parent / "fixtures" / "geometry" / "previous_numbers.pt", weights_only=True)


def _same(actual, expected):
    """Bit for bit, but float32 to 16 units in the last place: its exp / log / sqrt run vectorized by the CPU's
    instruction set (AVX2, AVX-512), whose results differ in the last bits from one processor to another (the
    fixtures were written on an AMD EPYC; an Intel Xeon's float32 differ by 1-8 units); float64 and integers agree."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.float32:
        ulp = torch.finfo(torch.float32).eps
        torch.testing.assert_close(actual, expected, rtol=16 * ulp, atol=16 * ulp)
        return
    assert torch.equal(actual, expected), (actual - expected).abs().max()


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_unchanged_formulas_give_the_previous_numbers_bit_for_bit(previous, dtype):
    v = {k.split(".", 1)[1]: t for k, t in previous.items() if k.startswith(dtype + ".")}
    p, t = v["pred"], v["target"]
    _same(kld(p, t), v["kld"])
    _same(gwd(p, t), v["gwd"])
    _same(aligned_iou_rotated(p, t), v["aligned_iou"])
    _same(box_iou_rotated(p, t), v["box_iou"])
    both = torch.cat((p, t))
    _same(nms_rotated(both, v["nms_scores"], 0.1), v["nms"])
    _same(batched_nms_rotated(both, v["nms_scores"], v["nms_classes"], 0.1), v["batched_nms"])
    _same(regularize_rboxes(p), v["regularized"])
    _same(rbox_to_poly(p), v["poly"])
    _same(poly_to_rbox(rbox_to_poly(t)), v["poly_to_rbox"])
    _same(rbox_to_hbox(p), v["hbox"])
    _same(hbox_to_rbox(rbox_to_hbox(t)), v["hbox_to_rbox"])
    mu, sigma = rbox_to_gaussian(p)
    _same(mu, v["mu"])
    _same(sigma, v["sigma"])
    # the le90 wrap was a private copy of wrap_angle_range(theta, -pi/2)
    _same(wrap_angle_range(v["theta"]), v["wrap_le90"])
    _same(wrap_angle_range(v["theta"], 0.0), v["wrap_0"])
    norm_p, norm_t = v["norm_pred"], v["norm_target"]
    _same(pairwise_hausdorff(norm_p[..., :4], norm_t[..., :4]), v["hausdorff4"])
    _same(generalized_iou(norm_p[..., None, :4], norm_t[:, None, :, :4]), v["giou"])
    _same(l1_coords(norm_p), v["l1_coords"])
    sig = v["sigmoid_boxes"]
    _same(pairwise_prob_iou(sig), v["prob_iou"])
    _same(pairwise_prob_iou(sig, angle_offset=0.0), v["prob_iou_offset0"])
    _same(pairwise_prob_iou(sig[..., :4]), v["prob_iou4"])
    layers = norm_p.unsqueeze(0).expand(3, -1, -1, -1)
    horizontal = SlDetrHungarianMatcher(SlDetrConfig(num_labels=4, box_type="horizontal"))
    _same(horizontal.cost(v["logits"], layers[..., :4], v["labels"], norm_t[..., :4], None), v["matcher_horizontal"])


def test_onnx_post_processing_gives_the_previous_numbers_bit_for_bit(previous):
    outputs = OnnxPostProcess(top_k=20, rotated=True)(previous["onnx.logits"], previous["f32.norm_pred"],
                                                      previous["f32.size"])
    assert len(outputs) == 5
    for i, value in enumerate(outputs):
        _same(value, previous[f"onnx.out{i}"])


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_merged_formulas_agree_with_the_previous_numbers(previous, dtype):
    v = {k.split(".", 1)[1]: t for k, t in previous.items() if k.startswith(dtype + ".")}
    norm_p, norm_t, size = v["norm_pred"], v["norm_target"], v["size"]
    ulp = torch.finfo(norm_p.dtype).eps
    # corners: one formula (DOTA order) for polygons, the ONNX graph and the Hausdorff cost (was a second one)
    hausdorff = pairwise_hausdorff(norm_p, norm_t)
    torch.testing.assert_close(hausdorff, v["hausdorff"], rtol=0, atol=4 * ulp)
    # pairwise KLD: covariance and precision through one rotate_diagonal (float64 inside)
    scale = size.unsqueeze(1)
    d = pairwise_kld(denormalize_rboxes(norm_p, scale), denormalize_rboxes(norm_t, scale))
    torch.testing.assert_close(d, v["pairwise_kld"], rtol=1e-12, atol=1e-12)
    # d's own tolerance (1e-12, the CPU's vectorized log / exp included) carried through the loss's log1p
    torch.testing.assert_close(kld_to_loss(d, 1.0), v["kld_to_loss"], rtol=1e-11, atol=1e-12)
    # the matcher's costs, which combine both
    layers = norm_p.unsqueeze(0).expand(3, -1, -1, -1)
    for cost in ("l1", "hausdorff"):
        matcher = SlDetrHungarianMatcher(SlDetrConfig(num_labels=4, matcher_box_cost=cost))
        got = matcher.cost(v["logits"], layers, v["labels"], norm_t, size)
        # float64: the pairwise KLD's tolerance carried through the cost's log1p (as above)
        torch.testing.assert_close(got, v[f"matcher_{cost}"], rtol=1e-11 if dtype == "f64" else 0,
                                   atol=1e-12 if dtype == "f64" else 64 * ulp)


def test_pairwise_kld_is_kld_of_every_pair():
    g = torch.Generator().manual_seed(0)
    pred = torch.cat((torch.rand(2, 6, 2, generator=g, dtype=torch.float64) * 200,
                      torch.rand(2, 6, 2, generator=g, dtype=torch.float64) * 50 + 1,
                      (torch.rand(2, 6, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi), -1)
    target = pred[:, :4] + torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    target[..., 2:4] = target[..., 2:4].abs()
    expected = kld(pred[:, :, None].expand(-1, -1, 4, -1), target[:, None].expand(-1, 6, -1, -1))
    torch.testing.assert_close(pairwise_kld(pred, target), expected, rtol=1e-9, atol=1e-9)


def test_rbox_corners_axis_aligned_and_rotated():
    # a 4 x 2 box at (10, 20): DOTA order starts top-left and runs clockwise on screen (y down)
    expected = torch.tensor([[8.0, 19.0], [12.0, 19.0], [12.0, 21.0], [8.0, 21.0]])
    torch.testing.assert_close(rbox_corners(torch.tensor([10.0, 20.0, 4.0, 2.0])), expected, rtol=0, atol=0)
    torch.testing.assert_close(rbox_corners(torch.tensor([10.0, 20.0, 4.0, 2.0, 0.0])), expected, rtol=0, atol=0)
    # a quarter turn (clockwise on screen) puts the first corner at the top right
    turned = rbox_corners(torch.tensor([10.0, 20.0, 4.0, 2.0, math.pi / 2], dtype=torch.float64))
    torch.testing.assert_close(turned[0], torch.tensor([11.0, 18.0], dtype=torch.float64))


def test_prob_iou_of_two_sets_is_the_block_of_one_set():
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(2, 9, 5, generator=g) * 0.5 + 0.2
    boxes[..., 4] = (boxes[..., 4] - 0.5) * math.pi
    full = prob_iou(boxes)
    _same(prob_iou(boxes[:, :4], boxes[:, 4:]), full[:, :4, 4:])
    # a square and the same square shifted by half its side: 1 - sqrt(1 - exp(-3/8)) (Bhattacharyya 3/8)
    two = prob_iou(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.6, 0.5, 0.2, 0.2]]))
    assert two.item() == pytest.approx(1 - math.sqrt(1 - math.exp(-3 / 8)), abs=1e-4)


def _shapely_iou(a: list[float], b: list[float]) -> float:
    pa, pb = (shapely.Polygon(rbox_to_poly(torch.tensor(x, dtype=torch.float64)).view(4, 2).numpy()) for x in (a, b))
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


@pytest.mark.parametrize("dtheta", [2.4583955850509406e-11, 1e-14, 3e-13, 1e-12, 1e-10, 1e-9, 1e-7])
def test_nearly_parallel_touching_boxes_iou_matches_shapely(dtheta):
    """Boxes whose edges lie on each other's edge lines and whose angles differ by a hair: before, the exact IoU
    clipped those edges with an ill-conditioned crossing parameter (IoU 3e-7 for two touching unit squares at
    dtheta = 2.5e-11, 4e-3 for shared sides at 1e-14) and was not symmetric."""
    rng = np.random.default_rng(int(-math.log10(dtheta) * 10))
    worst = asymmetry = 0.0
    for _ in range(40):
        w1, h1, w2, h2 = (float(v) for v in rng.integers(1, 80, 4))
        theta = float(rng.choice([0.0, rng.uniform(-4, 4)]))
        side, outside = float(rng.choice([-1, 1])), bool(rng.random() < 0.5)
        offset = side * (h1 / 2 + (h2 / 2 if outside else -h2 / 2))  # touching, or sharing a side from inside
        along = float(rng.uniform(-w1, w1))
        c, s = math.cos(theta), math.sin(theta)
        a = [0.0, 0.0, w1, h1, theta]
        b = [c * along - s * offset, s * along + c * offset, w2, h2, theta + float(rng.choice([-1, 1])) * dtheta]
        ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
        iou, reverse = aligned_iou_rotated(ta, tb).item(), aligned_iou_rotated(tb, ta).item()
        worst, asymmetry = max(worst, abs(iou - _shapely_iou(a, b))), max(asymmetry, abs(iou - reverse))
    assert worst < 1e-7 and asymmetry < 1e-7, (worst, asymmetry)
    # hypothesis's counterexamples of test_rotated_boxes.test_iou_properties: touching unit squares
    square, above = [0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, dtheta]
    pair = torch.tensor([square], dtype=torch.float64), torch.tensor([above], dtype=torch.float64)
    assert aligned_iou_rotated(*pair).item() == pytest.approx(aligned_iou_rotated(*pair[::-1]).item(), abs=1e-9)
    assert aligned_iou_rotated(*pair).item() < max(dtheta, 1e-12)


def test_rotated_boxes_re_exports_every_geometry_name():
    exported = set(rotated_boxes.__all__)
    for name in GEOMETRY_MODULES:
        module = importlib.import_module(f"sl_detr_hf.geometry_{name}")
        assert set(module.__all__) <= exported, name
        for attr in module.__all__:
            assert getattr(rotated_boxes, attr) is getattr(module, attr)
    defined = {attr for name in GEOMETRY_MODULES
               for attr in importlib.import_module(f"sl_detr_hf.geometry_{name}").__all__}
    assert exported == defined


def _imports(path: Path):
    """``(level, module, names)`` of every import statement of a file, nested ones included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name, []


# Private helpers still shared outside the geometry, left to the modules' owners (the DOTA reader's helpers used by
# the YOLO-OBB reader and the splitter; the converter's config reader): none may be added.
KNOWN_PRIVATE_IMPORTS = {
    "convert/rhino.py: from .common import _get",
    "data/split.py: from .dota import _files_line",
    "data/split.py: from .dota import _list_images",
    "data/split.py: from .dota import _split_outside",
    "data/yolo_obb.py: from .dota import _check_names",
    "data/yolo_obb.py: from .dota import _image_size",
    "data/yolo_obb.py: from .dota import _list_images",
    "data/yolo_obb.py: from .dota import _objects_columns",
    "data/yolo_obb.py: from .dota import _read_text",
    "data/yolo_obb.py: from .dota import _split_outside",
}


def test_no_private_name_is_imported_across_modules():
    offenders = {f"{path.relative_to(PACKAGE).as_posix()}: from {'.' * level}{module} import {name}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 for level, module, names in _imports(path)
                 if level or module.startswith("sl_detr_hf")
                 for name in names if name.startswith("_") and name != "__version__"}
    assert offenders - KNOWN_PRIVATE_IMPORTS == set()
    assert not any("geometry" in entry or "rotated_boxes" in entry for entry in offenders)


@pytest.mark.parametrize("name", GEOMETRY_MODULES)
def test_geometry_modules_import_only_torch_and_their_siblings(name):
    allowed = {"__future__", "math", "collections.abc", "torch", "torchvision",
               "torchvision.transforms.v2"}  # torchvision only inside the tv_tensors converters
    for level, module, _ in _imports(PACKAGE / f"geometry_{name}.py"):
        if level:
            assert level == 1 and module.startswith("geometry_"), module
        else:
            assert module in allowed, module
