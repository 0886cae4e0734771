"""Synthetic COCO data (fastops.synth) and the `python -m fastops` dispatcher; no mm stack needed."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fastops import synth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "fastops", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def load(ann_file):
    with open(ann_file) as f:
        return json.load(f)


@pytest.mark.parametrize("seed", [0, 1])
def test_keypoints_are_coco_persons_inside_their_boxes(tmp_path, seed):
    coco = load(synth.generate(str(tmp_path), "keypoints", images=6, size=256, seed=seed))
    assert [c["name"] for c in coco["categories"]] == ["person"]
    assert len(coco["categories"][0]["keypoints"]) == 17
    assert len(coco["images"]) == 6 and 6 <= len(coco["annotations"]) <= 18
    assert {a["image_id"] for a in coco["annotations"]} == set(range(1, 7))
    for ann in coco["annotations"]:
        kpts = np.array(ann["keypoints"]).reshape(17, 3)
        x, y, w, h = ann["bbox"]
        assert ann["num_keypoints"] == 17 and (kpts[:, 2] == 2).all()
        assert (kpts[:, 0] > x).all() and (kpts[:, 0] < x + w).all()
        assert (kpts[:, 1] > y).all() and (kpts[:, 1] < y + h).all()
        assert (kpts[:, :2] >= 0).all() and (kpts[:, :2] < 256).all()
        assert ann["area"] == pytest.approx(w * h, rel=1e-3)


def test_keypoints_are_drawn_where_annotated(tmp_path):
    coco = load(synth.generate(str(tmp_path), "keypoints", images=2, size=256, seed=3))
    img = cv2.imread(str(tmp_path / "images" / coco["images"][0]["file_name"]))
    assert img.shape == (256, 256, 3)
    for ann in (a for a in coco["annotations"] if a["image_id"] == 1):
        kpts = np.array(ann["keypoints"]).reshape(17, 3)[:, :2].round().astype(int)
        # joints are white dots on a grey (~110) background, people do not overlap
        assert (img[kpts[:, 1], kpts[:, 0]].mean(axis=1) > 200).all()


def test_detection_shapes_have_categories_and_boxes(tmp_path):
    coco = load(synth.generate(str(tmp_path), "detection", images=8, size=200, seed=0))
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    img = cv2.imread(str(tmp_path / "images" / "000001.jpg"))
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["category_id"] in (1, 2, 3)
        assert 0 <= x and x + w <= 200 and 0 <= y and y + h <= 200 and w > 10
        if ann["image_id"] == 1 and ann["category_id"] == 2:  # a filled square: saturated centre
            centre = img[int(y + h / 2), int(x + w / 2)].astype(int)
            assert centre.max() - centre.min() > 60


def test_detection_polygons_outline_the_drawn_shapes(tmp_path):
    """Every annotation has one COCO polygon inside its box that spans it; decoded as training
    decodes it (pycocotools), it covers the drawn shape (the image's saturated pixels in and around
    the box). The outline is the ideal shape in the annotated box; the drawing rounds it to whole
    pixels and antialiases its edge, so the smallest shapes (38 px) match least (IoU ~0.88)."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    size = 320
    coco = load(synth.generate(str(tmp_path), "detection", images=12, size=size, seed=1))
    vertices = {1: synth.CIRCLE_VERTICES, 2: 4, 3: 3}
    ious = []
    for image in coco["images"]:
        img = cv2.imread(str(tmp_path / "images" / image["file_name"]))
        # shapes have saturation >= 180, the grey background < 40; > 128: half-covered edge pixels
        saturated = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 1] > 128
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            assert len(ann["segmentation"]) == 1
            polygon = np.array(ann["segmentation"][0]).reshape(-1, 2)
            assert len(polygon) == vertices[ann["category_id"]]
            assert (polygon >= [x, y]).all() and (polygon <= [x + w + 1e-6, y + h + 1e-6]).all()
            assert polygon.min(0) == pytest.approx([x, y], abs=0.02)  # spans the box
            assert polygon.max(0) == pytest.approx([x + w, y + h], abs=0.02)
            assert ann["area"] == pytest.approx(synth.polygon_area(polygon), rel=1e-3)
            assert ann["area"] > 0.4 * w * h  # non-degenerate: triangle 1/2, circle ~pi/4, square 1
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], size, size))
            mask = mask_utils.decode(rle).astype(bool)
            drawn = np.zeros_like(saturated)
            x0, y0 = max(int(x) - 1, 0), max(int(y) - 1, 0)
            drawn[y0:int(y + h) + 2, x0:int(x + w) + 2] = saturated[y0:int(y + h) + 2, x0:int(x + w) + 2]
            ious.append((mask & drawn).sum() / (mask | drawn).sum())
    assert len(ious) >= 12 and min(ious) > 0.8, sorted(ious)[:5]


def test_same_seed_same_annotations(tmp_path):
    first = load(synth.generate(str(tmp_path / "a"), "detection", images=3, seed=7))
    second = load(synth.generate(str(tmp_path / "b"), "detection", images=3, seed=7))
    other = load(synth.generate(str(tmp_path / "c"), "detection", images=3, seed=8))
    assert first == second and first != other


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        synth.generate(str(tmp_path), "segmentation", images=1)
    with pytest.raises(ValueError, match="images"):
        synth.generate(str(tmp_path), "keypoints", images=0)


def test_cli_synth_and_dispatcher(tmp_path):
    done = cli("synth", "--out", str(tmp_path), "--kind", "keypoints", "--images", "2", "--size", "128")
    assert done.returncode == 0, done.stderr
    assert len(load(tmp_path / "annotations" / "train.json")["images"]) == 2
    assert len(os.listdir(tmp_path / "images")) == 2
    usage = cli("--help")
    assert usage.returncode == 0 and "train" in usage.stdout and "demo" in usage.stdout
    unknown = cli("frobnicate")
    assert unknown.returncode == 2 and "unknown command 'frobnicate'" in unknown.stderr
