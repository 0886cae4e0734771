"""Synthetic COCO-format datasets that the smoke configs can fit in a few iterations.

``python -m fastops synth --out DIR --kind keypoints|detection --images N [--size S] [--seed K]``
writes ``DIR/images/*.jpg`` and ``DIR/annotations/train.json``:

* ``keypoints``: 1-3 non-overlapping stick figures per image with the 17 COCO keypoints, all visible
  (``v=2``), one category ``person`` with COCO's keypoint names and skeleton.
* ``detection``: 1-4 non-overlapping filled shapes per image; the category is the shape (circle, square,
  triangle), each drawn in its own hue so colour and shape both identify it. Each annotation has the
  shape's box and its outline as a COCO polygon ``segmentation`` (the square's 4 corners, the
  triangle's 3, the circle as a 32-gon through the middles of the box's sides), so the set serves
  instance segmentation too; ``area`` is the polygon's area.

Images are uniform grey with mild noise, so the objects are easy to find; the same seed gives
byte-identical annotations.
"""
import argparse
import json
import os

import cv2
import numpy as np

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO's person skeleton, 1-based keypoint indices as in the COCO annotation files.
SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
# A standing person facing the camera, in units of body height, origin at the neck
# (x right, y down). The person's left side is on the image's right.
REST_POSE = np.array([
    (0.00, -0.10), (0.03, -0.13), (-0.03, -0.13), (0.06, -0.11), (-0.06, -0.11),
    (0.11, 0.02), (-0.11, 0.02), (0.16, 0.20), (-0.16, 0.20), (0.18, 0.36), (-0.18, 0.36),
    (0.08, 0.38), (-0.08, 0.38), (0.09, 0.62), (-0.09, 0.62), (0.10, 0.86), (-0.10, 0.86),
])
# (joint, parent) pairs whose limb angle is jittered: elbows, wrists, knees, ankles.
LIMBS = ((7, 5), (8, 6), (9, 7), (10, 8), (13, 11), (14, 12), (15, 13), (16, 14))
SHAPES = ("circle", "square", "triangle")
SHAPE_HUES = (0, 60, 120)  # OpenCV hue (0-179): red, green, blue


def random_pose(rng: np.random.Generator) -> np.ndarray:
    """A rest pose with each limb segment rotated about its parent joint by up to ±35°."""
    pose = REST_POSE.copy()
    for joint, parent in LIMBS:
        angle = rng.uniform(-0.6, 0.6)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        offset = REST_POSE[joint] - REST_POSE[parent]
        pose[joint] = pose[parent] + rot @ offset
    return pose


def place_person(rng: np.random.Generator, size: int) -> np.ndarray:
    """Keypoints [17, 2] in pixels of one person that fits inside the image."""
    height = rng.uniform(0.35, 0.8) * size
    pose = random_pose(rng) * height
    low, high = pose.min(0), pose.max(0)
    margin = 4.0
    origin = rng.uniform(margin - low, size - margin - high)
    return pose + origin


def draw_person(img: np.ndarray, kpts: np.ndarray, color) -> None:
    thickness = max(2, int(round((kpts[:, 1].max() - kpts[:, 1].min()) / 40)))
    for a, b in SKELETON:
        pa, pb = kpts[a - 1].round().astype(int), kpts[b - 1].round().astype(int)
        cv2.line(img, tuple(pa), tuple(pb), color, thickness, cv2.LINE_AA)
    for point in kpts.round().astype(int):
        cv2.circle(img, tuple(point), thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)


def person_annotation(kpts: np.ndarray) -> dict:
    x0, y0 = kpts.min(0) - 3
    x1, y1 = kpts.max(0) + 3
    visible = np.concatenate([kpts, np.full((17, 1), 2.0)], axis=1)
    return dict(
        category_id=1, iscrowd=0, num_keypoints=17,
        keypoints=[round(float(v), 2) for v in visible.reshape(-1)],
        bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
        area=round(float((x1 - x0) * (y1 - y0)), 2),
    )


def hsv_color(hue: int, rng: np.random.Generator):
    hsv = np.uint8([[[hue, rng.integers(180, 256), rng.integers(150, 256)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def shape_box(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square xyxy box inside the image, 12-35% of its side."""
    side = rng.uniform(0.12, 0.35) * size
    x0, y0 = rng.uniform(2, size - side - 2, size=2)
    return np.array([x0, y0, x0 + side, y0 + side])


def draw_shape(img: np.ndarray, rng: np.random.Generator, label: int, box: np.ndarray) -> dict:
    """Draws the shape of category ``label`` (0-based) filling ``box``; returns its annotation."""
    x0, y0, side = box[0], box[1], box[2] - box[0]
    color = hsv_color(SHAPE_HUES[label], rng)
    corner, far = box[:2].round().astype(int), box[2:].round().astype(int)
    if SHAPES[label] == "circle":
        cv2.circle(img, tuple((corner + far) // 2), int(side / 2), color, -1, cv2.LINE_AA)
    elif SHAPES[label] == "square":
        cv2.rectangle(img, tuple(corner), tuple(far), color, -1)
    else:
        triangle = np.array([[(corner[0] + far[0]) // 2, corner[1]], [corner[0], far[1]], list(far)])
        cv2.fillPoly(img, [triangle.astype(np.int32)], color, cv2.LINE_AA)
    bbox = [round(float(v), 2) for v in (x0, y0, side, side)]
    outline = shape_polygon(SHAPES[label], bbox)
    return dict(category_id=label + 1, iscrowd=0, area=round(polygon_area(outline), 2), bbox=bbox,
                segmentation=[[round(float(v), 2) for v in outline.reshape(-1)]])


CIRCLE_VERTICES = 32


def shape_polygon(shape: str, bbox) -> np.ndarray:
    """The outline [N, 2] of ``shape`` filling the xywh box ``bbox``, as :func:`draw_shape` draws it
    (which rounds it to whole pixels: the outline is within a pixel of the drawn shape), clockwise
    in image coordinates; its extent is the box."""
    x0, y0, side = bbox[0], bbox[1], bbox[2]
    if shape == "circle":  # a regular 32-gon with a vertex at the middle of each side of the box
        angle = np.arange(CIRCLE_VERTICES) * (2 * np.pi / CIRCLE_VERTICES)
        radius = side / 2
        points = np.stack([x0 + radius + radius * np.cos(angle), y0 + radius + radius * np.sin(angle)], 1)
        return np.clip(points, [x0, y0], [x0 + side, y0 + side])  # cos/sin rounding at the extremes
    if shape == "square":
        return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]])
    return np.array([[x0 + side / 2, y0], [x0 + side, y0 + side], [x0, y0 + side]])


def polygon_area(points: np.ndarray) -> float:
    """The shoelace area of a simple polygon [N, 2]."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def blank_image(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.normal(0.0, 6.0, size=(size, size, 3))
    return np.clip(110.0 + noise, 0, 255).astype(np.uint8)


def overlaps(box, boxes) -> bool:
    """Whether xyxy ``box`` intersects any of ``boxes``."""
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def keypoint_image(rng: np.random.Generator, size: int, tries: int = 20):
    """1-3 people that do not overlap (so every keypoint is visible); fewer if they do not fit."""
    img = blank_image(rng, size)
    anns, boxes = [], []
    for _ in range(rng.integers(1, 4)):
        for _ in range(tries):
            kpts = place_person(rng, size)
            box = np.concatenate([kpts.min(0) - 3, kpts.max(0) + 3])
            if not overlaps(box, boxes):
                draw_person(img, kpts, hsv_color(int(rng.integers(0, 180)), rng))
                anns.append(person_annotation(kpts))
                boxes.append(box)
                break
    return img, anns


def detection_image(rng: np.random.Generator, size: int, tries: int = 20):
    """1-4 shapes that do not overlap; fewer if they do not fit."""
    img = blank_image(rng, size)
    anns, boxes = [], []
    for _ in range(rng.integers(1, 5)):
        for _ in range(tries):
            label, box = int(rng.integers(0, len(SHAPES))), shape_box(rng, size)
            if not overlaps(box, boxes):
                anns.append(draw_shape(img, rng, label, box))
                boxes.append(box)
                break
    return img, anns


def categories(kind: str) -> list:
    if kind == "keypoints":
        return [dict(id=1, name="person", supercategory="person",
                     keypoints=list(KEYPOINT_NAMES), skeleton=[list(s) for s in SKELETON])]
    return [dict(id=i + 1, name=name, supercategory="shape") for i, name in enumerate(SHAPES)]


def generate(out: str, kind: str, images: int, size: int = 320, seed: int = 0) -> str:
    """Writes the dataset under ``out`` and returns the annotation file's path."""
    if kind not in ("keypoints", "detection"):
        raise ValueError(f"kind must be 'keypoints' or 'detection', got {kind!r}")
    if images < 1 or size < 64:
        raise ValueError(f"need images >= 1 and size >= 64, got images={images}, size={size}")
    rng = np.random.default_rng(seed)
    draw = keypoint_image if kind == "keypoints" else detection_image
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    coco = dict(images=[], annotations=[], categories=categories(kind))
    for image_id in range(1, images + 1):
        img, anns = draw(rng, size)
        file_name = f"{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(out, "images", file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        coco["images"].append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for ann in anns:
            ann.update(id=len(coco["annotations"]) + 1, image_id=image_id)
            coco["annotations"].append(ann)
    ann_file = os.path.join(out, "annotations", "train.json")
    with open(ann_file, "w") as f:
        json.dump(coco, f)
    return ann_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastops synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--kind", required=True, choices=("keypoints", "detection"))
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ann_file = generate(args.out, args.kind, args.images, args.size, args.seed)
    print(f"wrote {args.images} {args.kind} images to {os.path.join(args.out, 'images')} "
          f"and annotations to {ann_file}")
    return 0
