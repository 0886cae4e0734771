"""``python -m fastops doctor CONFIG``: find known OpenMMLab training pitfalls in a config.

The config is loaded with mmengine (``mmpose::`` / ``mmdet::`` bases included) and never built:
no model, dataset or GPU is needed. Each ``check_*`` function looks at one pitfall and returns
:class:`Finding` s (severity, config key, why it matters, the fix); :func:`main` prints them.

Exit status: 0 when there is no error (warnings allowed), 1 when at least one check reports an
error, 2 when the config cannot be loaded or the OpenMMLab stack is missing.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import math
import os
import re
import sys
import warnings
from typing import Any, Iterator, List, Optional, Tuple

ERROR = "error"
WARNING = "warning"

# Transforms that make a training pipeline differ from a validation one.
AUGMENTATION = re.compile(r"Random|Mosaic|MixUp|Affine|HSV|PhotoMetric|CopyPaste|Albu|Expand|Crop")

# Heads whose num_classes must equal the dataset's class count (RPN heads are class-agnostic,
# semantic heads count stuff classes too).
CLASS_HEAD = re.compile(r"(bbox_head|mask_head)(\[\d+\])?$")

# Deterministic resizes of validation pipelines (BottomupResize, Resize, ...).
VAL_RESIZE = re.compile(r"^(?!Random).*Resize")

# Pose datasets recognisable from an annotation path, most specific first; the names are the
# `dataset_name` of mmpose's metainfo files (configs/_base_/datasets/<name>.py).
ANNOTATION_DATASETS = (
    ("coco_wholebody", re.compile(r"wholebody")),
    ("crowdpose", re.compile(r"crowdpose")),
    ("ochuman", re.compile(r"ochuman")),
    ("halpe", re.compile(r"halpe")),
    ("mpii", re.compile(r"mpii")),
    ("aic", re.compile(r"(^|[/_])aic([/_.]|$)")),
    ("coco", re.compile(r"coco|person_keypoints")),
)

# model.head.loss_mle.loss_weight of mmpose's published RTMO configs, by dataset and
# backbone widen_factor (RTMO-s 0.5, RTMO-m 0.75, RTMO-l 1.0).
PUBLISHED_MLE_WEIGHTS = {
    ("coco", 0.5): ("rtmo-s_8xb32-600e_coco-640x640.py", 1.0),
    ("coco", 0.75): ("rtmo-m_16xb16-600e_coco-640x640.py", 1e-2),
    ("coco", 1.0): ("rtmo-l_16xb16-600e_coco-640x640.py", 1e-2),
    ("crowdpose", 0.5): ("rtmo-s_8xb32-700e_crowdpose-640x640.py", 1e-3),
    ("crowdpose", 0.75): ("rtmo-m_16xb16-700e_crowdpose-640x640.py", 1e-3),
    ("crowdpose", 1.0): ("rtmo-l_16xb16-700e_crowdpose-640x640.py", 1e-3),
}
MLE_WEIGHT_TOLERANCE = 10.0  # flag a weight more than this factor away from the published one
MANY_CHECKPOINTS = 50  # a run saving more checkpoints than this needs max_keep_ckpts


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found in a config."""

    severity: str  # ERROR or WARNING
    key: str  # dotted config key where the problem is
    problem: str
    why: str
    fix: str


class DoctorError(Exception):
    """The config cannot be examined: the OpenMMLab stack is missing."""


@dataclasses.dataclass
class Target:
    """A loaded config and the launch it is meant for."""

    cfg: dict  # the merged config (mmengine.Config.to_dict())
    path: str
    nproc: int
    batch_per_proc: int

    @property
    def trains(self) -> bool:
        """The config sets up training (tracking / test-only configs set these to None)."""
        return bool(self.cfg.get("train_dataloader")) and bool(self.cfg.get("train_cfg"))

    @functools.cached_property
    def ancestors(self) -> List[Tuple[str, dict]]:
        """(path, merged config) of every `_base_` in the chain, nearest first."""
        return list(_load_ancestors(self.path))

    def nearest_ancestor_value(self, dotted: str) -> Tuple[Optional[str], Any]:
        """The value of `dotted` in the nearest base config that sets it, with that base's path."""
        for path, cfg in self.ancestors:
            value = lookup(cfg, dotted)
            if value is not None:
                return path, value
        return None, None


# ----------------------------------------------------------------------------- config access
def lookup(cfg: Any, dotted: str) -> Any:
    """cfg[a][b][c] for dotted 'a.b.c', None where a level is missing."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def type_name(cfg: Any) -> Optional[str]:
    """The registry name of a `dict(type=...)`, scope prefix ('mmdet.') removed."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    return kind.rsplit(".", 1)[-1] if isinstance(kind, str) else None


def walk_dicts(node: Any, key: str) -> Iterator[Tuple[str, dict]]:
    """Every dict nested in `node` (itself included), with its config key."""
    if isinstance(node, dict):
        yield key, node
        for name, value in node.items():
            yield from walk_dicts(value, f"{key}.{name}")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from walk_dicts(value, f"{key}[{index}]")


def iter_datasets(dataset: Any, key: str) -> Iterator[Tuple[str, dict]]:
    """A dataset config and the ones it wraps (Repeat/Concat/Combined/MultiImageMix), outer first."""
    if not isinstance(dataset, dict):
        return
    yield key, dataset
    yield from iter_datasets(dataset.get("dataset"), f"{key}.dataset")
    for index, child in enumerate(dataset.get("datasets") or []):
        yield from iter_datasets(child, f"{key}.datasets[{index}]")


def pipeline_types(dataset: Any) -> List[str]:
    """Transform names of every pipeline in a dataset tree, nested ones included (the
    `transforms` of ProposalBroadcaster / RandomChoice, Mosaic's `pre_transform`)."""
    return [
        name
        for _, node in iter_datasets(dataset, "")
        for _, transform in walk_dicts(node.get("pipeline") or [], "")
        if (name := type_name(transform))
    ]


def pipeline_key(dataset: Any, key: str) -> str:
    """Config key of the outermost pipeline in a dataset tree."""
    return next((f"{k}.pipeline" for k, node in iter_datasets(dataset, key) if node.get("pipeline")),
                f"{key}.pipeline")


def augmentations(cfg: Any) -> List[str]:
    """Random augmentations of cfg's training pipeline that its validation pipeline lacks."""
    val_types = set(pipeline_types(lookup(cfg, "val_dataloader.dataset")))
    train_types = pipeline_types(lookup(cfg, "train_dataloader.dataset"))
    return [t for t in train_types if AUGMENTATION.search(t) and t not in val_types]


def custom_hooks(cfg: Any, name: str) -> Iterator[Tuple[str, dict]]:
    for index, hook in enumerate(cfg.get("custom_hooks") or []):
        if type_name(hook) == name:
            yield f"custom_hooks[{index}]", hook


def loop_length(cfg: Any) -> Tuple[Optional[int], bool]:
    """(max_epochs or max_iters, whether the train loop counts epochs)."""
    train_cfg = cfg.get("train_cfg") or {}
    if "max_iters" in train_cfg and "max_epochs" not in train_cfg:
        return train_cfg["max_iters"], False
    return train_cfg.get("max_epochs"), True


# ----------------------------------------------------------------------------- loading
def require_mm_stack() -> None:
    """Import mmengine, and mmdet / mmpose where installed (registers their config scopes)."""
    try:
        importlib.import_module("mmengine")
    except ImportError as err:
        raise DoctorError(
            "fastops doctor needs the OpenMMLab stack (mmengine, mmcv, and mmdet and/or mmpose): "
            "pip install 'fastops[mm]'") from err
    for package in ("mmdet", "mmpose"):
        try:
            importlib.import_module(package)
        except ImportError:
            pass  # a config needing it fails to load with mmengine's own message


def load_config(path: str) -> dict:
    """The merged config as a plain dict; custom_imports are not imported (nothing is built)."""
    from mmengine.config import Config

    return Config.fromfile(path, import_custom_modules=False, lazy_import=False,
                           format_python_code=False).to_dict()


def base_paths(path: str) -> List[str]:
    """The `_base_` files of a .py config, as paths (`pkg::rel` → pkg's .mim/configs/rel)."""
    if not path.endswith(".py"):
        return []
    with open(path, encoding="utf-8") as file:
        body = ast.parse(file.read()).body
    for node in body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets):
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:
                return []
            bases = [bases] if isinstance(bases, str) else list(bases)
            return [resolve_base(base, path) for base in bases]
    return []


def resolve_base(base: str, child_path: str) -> str:
    if "::" in base:
        from mmengine.utils import get_installed_path

        package, relative = base.split("::", 1)
        return os.path.join(get_installed_path(package), ".mim", "configs", relative)
    return os.path.join(os.path.dirname(os.path.abspath(child_path)), base)


def _load_ancestors(path: str) -> Iterator[Tuple[str, dict]]:
    for base in base_paths(path):
        yield base, load_config(base)
        yield from _load_ancestors(base)


# ----------------------------------------------------------------------------- checks
def check_validation_pipeline_in_training(target: Target) -> List[Finding]:
    """The training pipeline is (nearly) the validation one: the base's augmentations are gone."""
    cfg = target.cfg
    train_dataset = lookup(cfg, "train_dataloader.dataset")
    train_types = pipeline_types(train_dataset)
    val_types = pipeline_types(lookup(cfg, "val_dataloader.dataset"))
    base_path, base_cfg = next(((p, c) for p, c in target.ancestors if augmentations(c)),
                               (None, None))
    if base_cfg is not None:
        base_train = set(pipeline_types(lookup(base_cfg, "train_dataloader.dataset")))
        missing = [t for t in augmentations(base_cfg) if t not in train_types]
        val_only = [t for t in train_types
                    if VAL_RESIZE.search(t) and t in val_types and t not in base_train]
        if not missing or any("Flip" not in t for t in augmentations(cfg)):
            return []  # a flip alone does not make a validation pipeline a training one
        uses = f"uses {', '.join(val_only)} and " if val_only else ""
        problem = (f"{uses}lacks {', '.join(missing)} that the base config "
                   f"{os.path.basename(base_path)} trains with")
        fix = ("inherit the base config's train pipeline (drop the `pipeline=` override of "
               f"train_dataloader.dataset) or put back {', '.join(missing)}")
    elif train_types == val_types and any(VAL_RESIZE.search(t) for t in train_types):
        problem = "is identical to val_dataloader's pipeline"
        fix = "add random augmentations (flip, random resize / affine, ...) to the train pipeline"
    else:
        return []
    return [Finding(
        ERROR, pipeline_key(train_dataset, "train_dataloader.dataset"),
        f"the training pipeline {problem}: it is the validation pipeline",
        "a validation pipeline only resizes: every epoch shows the model the same images, so it "
        "overfits and the published accuracy is not reached",
        fix,
    )]


def check_lr_scaling(target: Target) -> List[Finding]:
    """The lr was tuned for another total batch and auto_scale_lr will not rescale it."""
    cfg = target.cfg
    lr = lookup(cfg, "optim_wrapper.optimizer.lr")
    auto_scale = cfg.get("auto_scale_lr") or {}
    if lr is None or auto_scale.get("enable", False):
        return []
    named_batch, name = published_launch(target)
    base_batch = auto_scale.get("base_batch_size", named_batch)
    total = target.nproc * target.batch_per_proc
    tuned_for = {b for b in (base_batch, named_batch) if b is not None}
    if not tuned_for or total in tuned_for or _already_scaled(target, lr, total, tuned_for):
        return []
    source = "auto_scale_lr.base_batch_size" if "base_batch_size" in auto_scale else name
    conflict = (f"; {name} is {named_batch}, check which one the lr was tuned for"
                if named_batch not in (None, base_batch) else "")
    state = "disabled" if cfg.get("auto_scale_lr") else "missing"
    return [Finding(
        WARNING, "optim_wrapper.optimizer.lr",
        f"lr={lr:g} is tuned for a total batch of {base_batch} ({source}{conflict}) but this run "
        f"has {target.nproc} process(es) x {target.batch_per_proc} = {total}, and auto_scale_lr "
        f"is {state}",
        "the linear scaling rule (Goyal et al. 2017: lr proportional to the total batch) is how "
        f"the published lr transfers; unscaled, the lr per sample is {base_batch / total:.3g}x the "
        "tuned one, which diverges or converges to a worse model",
        f"set optim_wrapper.optimizer.lr={_scaled_lr(lr, total, base_batch)}"
        + (f" ({_scaled_lr(lr, total, named_batch)} if tuned for {named_batch})" if conflict else "")
        + f", or auto_scale_lr = dict(enable=True, base_batch_size={base_batch}) so mmengine "
        "scales it at start",
    )]


def _scaled_lr(lr: float, total: int, base_batch: int) -> str:
    return f"{lr * total / base_batch:.6g} (= {lr:g} x {total}/{base_batch})"


def published_launch(target: Target) -> Tuple[Optional[int], str]:
    """Total batch of the `NxbB` launch in the name of the config that set the lr.

    That is the config itself when its lr differs from its base's, else the nearest base that
    has such a name (a user's `my_1xb32.py` that keeps the base lr is not a retuned launch).
    """
    paths = [p for p, _ in target.ancestors]
    _, base_lr = target.nearest_ancestor_value("optim_wrapper.optimizer.lr")
    sets_lr = base_lr != lookup(target.cfg, "optim_wrapper.optimizer.lr")
    for path in [target.path] + paths if sets_lr else paths + [target.path]:
        match = re.search(r"(\d+)xb(\d+)", os.path.basename(path))
        if match:
            return int(match[1]) * int(match[2]), f"the {match[0]} launch of {os.path.basename(path)}"
    return None, ""


def _already_scaled(target: Target, lr: float, total: int, tuned_for: set) -> bool:
    """The config's lr is the base config's lr linearly scaled to this total batch."""
    _, base_lr = target.nearest_ancestor_value("optim_wrapper.optimizer.lr")
    return base_lr is not None and any(
        math.isclose(lr, base_lr * total / batch, rel_tol=0.02) for batch in tuned_for)


def check_dataset_metainfo(target: Target) -> List[Finding]:
    """Pose datasets: annotation file vs metainfo, and keypoint counts vs the head's."""
    cfg = target.cfg
    if not _is_scope_config(cfg, "mmpose"):
        return []
    num_keypoints = lookup(cfg, "model.head.num_keypoints")
    findings = []
    for loader in ("train_dataloader", "val_dataloader"):
        findings += _dataset_tree_metainfo(lookup(cfg, f"{loader}.dataset"), f"{loader}.dataset",
                                           num_keypoints)
    for key, node in walk_dicts(lookup(cfg, "model.head"), "model.head"):
        if isinstance(node.get("metainfo"), str) and num_keypoints is not None:
            metainfo = _pose_metainfo(dict(metainfo=dict(from_file=node["metainfo"])))
            findings += _keypoint_count(f"{key}.metainfo", metainfo, num_keypoints)
    return findings


def _dataset_tree_metainfo(dataset: Any, key: str,
                           num_keypoints: Optional[int]) -> List[Finding]:
    findings = []
    counted = False
    for key, node in iter_datasets(dataset, key):
        metainfo = _pose_metainfo(node)
        if metainfo is None:
            continue
        findings += _annotation_vs_metainfo(key, node, metainfo)
        if not counted and num_keypoints is not None:
            findings += _keypoint_count(f"{key}.metainfo", metainfo, num_keypoints)
        counted = True  # wrapped datasets map their keypoints to the outer metainfo
    return findings


def _is_scope_config(cfg: dict, scope: str) -> bool:
    """A config of `scope` (mmpose / mmdet), and that package is installed to read metainfo."""
    if cfg.get("default_scope") != scope:
        return False
    try:
        importlib.import_module(f"{scope}.datasets")
    except ImportError:
        return False
    return True


def dataset_metainfo(dataset: dict, scope: str) -> Optional[dict]:
    """A dataset config's `metainfo`, else its class's METAINFO in `scope`'s DATASETS registry."""
    metainfo = dataset.get("metainfo")
    if metainfo is None:
        registry = importlib.import_module(f"{scope}.registry").DATASETS
        name = type_name(dataset)
        metainfo = getattr(registry.get(name) if name else None, "METAINFO", None)
    return metainfo if isinstance(metainfo, dict) else None


def _pose_metainfo(dataset: dict) -> Optional[dict]:
    """The parsed pose metainfo (dataset_name, num_keypoints, ...) a dataset config gets."""
    from mmpose.datasets.datasets.utils import parse_pose_metainfo

    metainfo = dataset_metainfo(dataset, "mmpose")
    try:
        with warnings.catch_warnings():  # it warns when it finds configs/... in mmpose's .mim
            warnings.simplefilter("ignore")
            return parse_pose_metainfo(metainfo) if metainfo else None
    except (OSError, KeyError, AssertionError, TypeError):
        return None  # not a pose metainfo (a wrapper's, or an incomplete one)


def _train_pose_dataset_name(cfg: dict) -> Optional[str]:
    """`dataset_name` of the outermost training dataset's metainfo."""
    datasets = iter_datasets(lookup(cfg, "train_dataloader.dataset"), "")
    names = (meta.get("dataset_name") for _, d in datasets if (meta := _pose_metainfo(d)))
    return next(names, None)


def _annotation_vs_metainfo(key: str, dataset: dict, metainfo: dict) -> List[Finding]:
    ann_file = os.path.join(str(dataset.get("data_root") or ""), str(dataset.get("ann_file") or ""))
    named = next((name for name, pattern in ANNOTATION_DATASETS if pattern.search(ann_file.lower())),
                 None)
    declared = metainfo.get("dataset_name")
    if named is None or declared is None or _same_dataset(named, declared, ann_file):
        return []
    return [Finding(
        ERROR, f"{key}.metainfo",
        f"ann_file '{dataset.get('ann_file')}' is a {named} annotation file but the dataset's "
        f"metainfo is {declared}'s ({metainfo.get('num_keypoints')} keypoints)",
        "keypoints are read by index: with another dataset's metainfo the flip pairs, sigmas and "
        "skeleton apply to the wrong joints (or indexing fails), and OKS/AP are meaningless",
        f"use the {named} metainfo (metainfo=dict(from_file='configs/_base_/datasets/{named}.py') "
        f"or the {named} dataset type), or the {declared} annotation file",
    )]


def _same_dataset(named: str, declared: str, ann_file: str) -> bool:
    """The metainfo is the annotation file's dataset or a subset of it (coco_wholebody_hand of a
    coco_wholebody file), or the file carries the metainfo's name (Human-Art's humanart_coco)."""
    def alnum(text):
        return re.sub(r"[^a-z0-9]", "", text.lower())

    return alnum(named) in alnum(declared) or alnum(declared) in alnum(ann_file)


def _keypoint_count(key: str, metainfo: Optional[dict], num_keypoints: int) -> List[Finding]:
    if metainfo is None or metainfo.get("num_keypoints") == num_keypoints:
        return []
    return [Finding(
        ERROR, key,
        f"{metainfo.get('dataset_name')} metainfo has {metainfo['num_keypoints']} keypoints but "
        f"model.head.num_keypoints={num_keypoints}",
        "targets, OKS sigmas and predictions must have the same keypoint count: training fails "
        "with a shape error or learns the wrong joints",
        f"make model.head.num_keypoints and every metainfo agree (e.g. num_keypoints="
        f"{metainfo['num_keypoints']}, or a {num_keypoints}-keypoint metainfo)",
    )]


def check_detection_classes(target: Target) -> List[Finding]:
    """Detection datasets: the metainfo's class count vs every head's num_classes."""
    cfg = target.cfg
    if not _is_scope_config(cfg, "mmdet"):
        return []
    classes = _train_classes(cfg)
    if classes is None or "language_model" in (cfg.get("model") or {}):
        return []  # open-vocabulary detectors take their classes from text
    return [Finding(
        ERROR, key + ".num_classes",
        f"{key}.num_classes={node['num_classes']} but the training dataset's metainfo has "
        f"{len(classes)} class(es)",
        "labels index the classifier's outputs: extra outputs are never trained as positives "
        "and evaluation reports wrong classes; too few outputs fail on the first label",
        f"{key}.num_classes={len(classes)}",
    ) for key, node in walk_dicts(cfg.get("model"), "model")
        if isinstance(node.get("num_classes"), int) and node["num_classes"] != len(classes)
        and CLASS_HEAD.search(key)]


def _train_classes(cfg: dict) -> Optional[list]:
    """Object classes of the outermost training dataset that declares them (a panoptic
    dataset's `thing_classes`: its stuff classes have no boxes)."""
    for _, dataset in iter_datasets(lookup(cfg, "train_dataloader.dataset"), ""):
        metainfo = dataset_metainfo(dataset, "mmdet") or {}
        classes = metainfo.get("thing_classes") or metainfo.get("classes")
        if classes:
            return list(classes)
    return None


def check_amp_classification_loss(target: Target) -> List[Finding]:
    """fp16 training with plain CrossEntropyLoss heads."""
    cfg = target.cfg
    if type_name(cfg.get("optim_wrapper")) != "AmpOptimWrapper":
        return []
    return [Finding(
        WARNING, f"{key}.type",
        "AmpOptimWrapper (fp16) with a plain CrossEntropyLoss",
        "under fp16 autocast the classifier's logits are fp16 (max 65504): one overflowing "
        "logit becomes inf, log-softmax turns it into NaN and the step is skipped or the "
        "weights are poisoned",
        "type='SafeCrossEntropyLoss' (fastops' mmdet drop-in: same arguments plus clamp, "
        "clamp_grad) with custom_imports=dict(imports=['fastops.mm'])",
    ) for key, node in walk_dicts(cfg.get("model"), "model") if type_name(node) == "CrossEntropyLoss"]


# mmdet's RTMDet heads and their fastops drop-ins (one fused dynamic soft-label assignment per batch).
FAST_RTMDET_HEADS = {
    "RTMDetHead": "FastRTMDetHead",
    "RTMDetSepBNHead": "FastRTMDetSepBNHead",
    "RTMDetInsSepBNHead": "FastRTMDetInsSepBNHead",
}
DSL_ASSIGNERS = ("DynamicSoftLabelAssigner", "FusedDynamicSoftLabelAssigner")
HORIZONTAL_IOU = ("BboxOverlaps2D", "BBoxOverlaps2D")
DSL_MEMORY = (
    "the stock DynamicSoftLabelAssigner runs per image in Python and builds [valid priors x gts "
    "x classes] soft-label cost tensors: crowded images (100+ gts) run out of GPU memory "
    "(mmdet #9616, mmrotate #745) and the loop costs a launch storm per image")
FASTOPS_IMPORT = "custom_imports=dict(imports=['fastops.mm'], allow_failed_imports=False)"


def _imports_fastops_mm(cfg: dict) -> bool:
    imports = lookup(cfg, "custom_imports.imports") or []
    imports = [imports] if isinstance(imports, str) else imports
    return any(name == "fastops.mm" or str(name).startswith("fastops.mm.") for name in imports)


def _dsl_assigners(cfg: dict) -> Iterator[Tuple[str, dict]]:
    """(key, config) of every DynamicSoftLabelAssigner / FusedDynamicSoftLabelAssigner in the model."""
    for key, node in walk_dicts(cfg.get("model"), "model"):
        if type_name(node) in DSL_ASSIGNERS:
            yield key, node


def check_rtmdet_assignment(target: Target) -> List[Finding]:
    """Stock RTMDet heads / DynamicSoftLabelAssigner (fastops has the batched drop-ins), and
    fastops' RTMDet types that cannot build."""
    cfg, findings = target.cfg, []
    assigners = list(_dsl_assigners(cfg))
    horizontal = all(type_name(node.get("iou_calculator") or {"type": "BboxOverlaps2D"}) in HORIZONTAL_IOU
                     for _, node in assigners)  # rotated (mmrotate's RTMDet-R): no fastops drop-in
    heads = [(key, node) for key, node in walk_dicts(cfg.get("model"), "model")
             if type_name(node) in FAST_RTMDET_HEADS or type_name(node) in FAST_RTMDET_HEADS.values()]
    for key, head in heads:
        kind = type_name(head)
        if kind in FAST_RTMDET_HEADS and horizontal and any(type_name(a) == "DynamicSoftLabelAssigner"
                                                            for _, a in assigners):
            findings.append(Finding(
                WARNING, f"{key}.type", f"stock {kind} with mmdet's DynamicSoftLabelAssigner", DSL_MEMORY,
                f"type='{FAST_RTMDET_HEADS[kind]}' (fastops: the same head, the targets of the whole "
                f"batch from one fused assignment; a DynamicSoftLabelAssigner in train_cfg is built as "
                f"FusedDynamicSoftLabelAssigner) with {FASTOPS_IMPORT}"))
        elif kind in FAST_RTMDET_HEADS.values():
            other = [(k, a) for k, a in walk_dicts(cfg.get("model"), "model")
                     if k.endswith(".assigner") and type_name(a) not in DSL_ASSIGNERS]
            findings += [Finding(
                ERROR, f"{k}.type", f"{kind} with assigner {type_name(a)}",
                f"{kind} assigns the batch with the fused dynamic soft-label op; building the model "
                "raises ValueError with any other assigner",
                "assigner=dict(type='DynamicSoftLabelAssigner') or 'FusedDynamicSoftLabelAssigner', "
                f"or the stock head type '{[s for s, f in FAST_RTMDET_HEADS.items() if f == kind][0]}'")
                for k, a in other]
    if not heads and horizontal:  # another head on the stock assigner: the assigner alone is a drop-in
        findings += [Finding(
            WARNING, f"{key}.type", "mmdet's DynamicSoftLabelAssigner", DSL_MEMORY,
            f"type='FusedDynamicSoftLabelAssigner' (fastops: same arguments and AssignResult) with "
            f"{FASTOPS_IMPORT}") for key, node in assigners if type_name(node) == "DynamicSoftLabelAssigner"]
    uses_fastops = [key for key, node in heads if type_name(node) in FAST_RTMDET_HEADS.values()]
    uses_fastops += [key for key, node in assigners if type_name(node) == "FusedDynamicSoftLabelAssigner"]
    if uses_fastops and not _imports_fastops_mm(cfg):
        findings += [Finding(
            ERROR, f"{key}.type", f"{type_name(lookup(cfg, key))} without importing fastops.mm",
            "the fastops types register into mmdet's registries when fastops.mm is imported; "
            "without it building the model fails with a KeyError (not in the registry)",
            FASTOPS_IMPORT) for key in uses_fastops]
    return findings


SECOND_STAGE_SKIPPED = (
    "RTMO's second stage (proxy_target_cc and the raised loss_mle/loss_oks weights) is "
    "skipped, and the published accuracy is reached only with it")


def check_mode_switch_epoch(target: Target) -> List[Finding]:
    """RTMOModeSwitchHook switches that never happen or crash."""
    findings = []
    for key, hook in custom_hooks(target.cfg, "RTMOModeSwitchHook"):
        epoch_attributes = hook.get("epoch_attributes")
        if not isinstance(epoch_attributes, dict):
            continue  # mmpose itself rejects it when building the hook
        key = f"{key}.epoch_attributes"
        findings += _unreached_switch(target, key, epoch_attributes)
        findings += _malformed_switch(key, epoch_attributes)
    return findings


def _unreached_switch(target: Target, key: str, epoch_attributes: dict) -> List[Finding]:
    max_epochs = lookup(target.cfg, "train_cfg.max_epochs")
    if max_epochs is None:
        return []
    late = sorted(e for e in epoch_attributes if isinstance(e, int) and e >= max_epochs)
    if not late:
        return []
    return [Finding(
        ERROR, key,
        f"RTMOModeSwitchHook switches at epoch {late} but train_cfg.max_epochs={max_epochs} "
        f"(the hook sees epochs 0..{max_epochs - 1})",
        f"the switch never happens: {SECOND_STAGE_SKIPPED}",
        f"switch at an epoch below {max_epochs}{_proportional_epoch(target, late[0])}",
    )]


def _malformed_switch(key: str, epoch_attributes: dict) -> List[Finding]:
    """Entries mmpose 1.3.2's hook cannot apply: it tests `runner.epoch in epoch_attributes`
    (an int) and calls `.items()` on the value."""
    findings = []
    for epoch, changes in epoch_attributes.items():
        if not isinstance(epoch, int):
            findings.append(Finding(
                ERROR, f"{key}[{epoch!r}]", f"switch epoch {epoch!r} is not an int",
                f"runner.epoch is an int, so this switch never happens: {SECOND_STAGE_SKIPPED}",
                f"use the int key {epoch}: epoch_attributes={{{epoch}: {{...}}}}"))
        elif not isinstance(changes, dict):
            findings.append(Finding(
                ERROR, f"{key}[{epoch}]",
                f"the changes for epoch {epoch} are a {type(changes).__name__}, not a dict",
                f"the hook calls .items() on them: training crashes with AttributeError when "
                f"epoch {epoch} starts, after all the epochs before it",
                f"epoch_attributes={{{epoch}: {{'loss_mle.loss_weight': ..., ...}}}} (one dict "
                "of attribute: value)"))
    return findings


def _proportional_epoch(target: Target, epoch: int) -> str:
    base_path, base_epochs = target.nearest_ancestor_value("train_cfg.max_epochs")
    if base_epochs is None or epoch >= base_epochs:
        return ""
    scaled = round(epoch * target.cfg["train_cfg"]["max_epochs"] / base_epochs)
    return (f", e.g. {scaled} (= {epoch}/{base_epochs} of the run, as in "
            f"{os.path.basename(base_path)})")


def check_mle_loss_weight(target: Target) -> List[Finding]:
    """loss_mle weight far from the published RTMO config of the same size."""
    cfg = target.cfg
    weight = lookup(cfg, "model.head.loss_mle.loss_weight")
    if weight is None or not _is_scope_config(cfg, "mmpose"):
        return []
    size = lookup(cfg, "model.backbone.widen_factor")
    published = PUBLISHED_MLE_WEIGHTS.get((_train_pose_dataset_name(cfg), size))
    if published is None:
        return []
    config_name, published_weight = published
    if published_weight / MLE_WEIGHT_TOLERANCE <= weight <= published_weight * MLE_WEIGHT_TOLERANCE:
        return []
    return [Finding(
        WARNING, "model.head.loss_mle.loss_weight",
        f"loss_mle weight {weight:g} is more than {MLE_WEIGHT_TOLERANCE:g}x away from the "
        f"published {published_weight:g} of {config_name}",
        "the MLECC loss is a log-likelihood of a density (unbounded, can be negative): too large "
        "a weight lets it dominate the OKS/box losses, too small leaves the DCC coordinate head "
        "barely trained",
        f"loss_mle=dict(loss_weight={published_weight:g}) as published",
    )]


def check_checkpoint_survival(target: Target) -> List[Finding]:
    """Checkpoints that are never written before the end, or that fill the disk."""
    key, hook = checkpoint_hook(target.cfg)
    if hook is None:
        return [Finding(ERROR, key, "the CheckpointHook is disabled",
                        "nothing is saved: an interrupted run restarts from scratch",
                        f"{key} = dict(type='CheckpointHook', interval=N, max_keep_ckpts=3)")]
    length, loop_by_epoch = loop_length(target.cfg)
    return (_checkpoint_interval(key, hook, length, loop_by_epoch)
            or _checkpoint_retention(key, hook, length))


def checkpoint_hook(cfg: Any) -> Tuple[str, Optional[dict]]:
    """(key, config) of the CheckpointHook; mmengine's default (interval=1) when unset."""
    default_hooks = cfg.get("default_hooks") or {}
    if "checkpoint" not in default_hooks:
        found = next(custom_hooks(cfg, "CheckpointHook"), None)
        return found or ("default_hooks.checkpoint", dict(type="CheckpointHook", interval=1))
    return "default_hooks.checkpoint", default_hooks["checkpoint"]


def _checkpoint_interval(key: str, hook: dict, length: Optional[int],
                         loop_by_epoch: bool) -> List[Finding]:
    interval = hook.get("interval", -1)
    by_epoch = hook.get("by_epoch", True)
    unit = "epochs" if by_epoch else "iterations"
    if interval is None or interval <= 0:
        problem = f"CheckpointHook has no interval ({interval})"
    elif by_epoch and not loop_by_epoch:
        problem = "CheckpointHook counts epochs (by_epoch=True) but the train loop is iteration-based"
    elif length is not None and interval > length:
        problem = f"checkpoint interval {interval} {unit} exceeds the run ({length} {unit})"
    else:
        return []
    return [Finding(
        ERROR, f"{key}.interval", problem,
        "no periodic checkpoint is written (at most the final one): an interruption loses the run",
        f"{key} = dict(type='CheckpointHook', interval=N" + ("" if loop_by_epoch else ", by_epoch=False")
        + ", max_keep_ckpts=3) with N well below the run length",
    )]


def _checkpoint_retention(key: str, hook: dict, length: Optional[int]) -> List[Finding]:
    if length is None:
        return []
    saved = length // hook["interval"]
    if saved <= MANY_CHECKPOINTS or (hook.get("max_keep_ckpts") or -1) > 0:
        return []
    return [Finding(
        WARNING, f"{key}.max_keep_ckpts",
        f"{saved} checkpoints (run length {length} / interval {hook['interval']}) and no max_keep_ckpts",
        "every checkpoint is kept: a long run fills the disk and dies mid-way",
        f"{key}.max_keep_ckpts=3 (resuming needs only the latest)",
    )]


def check_loop_length(target: Target) -> List[Finding]:
    """A train loop (custom or not) that sets neither max_epochs nor max_iters."""
    cfg = target.cfg
    train_cfg = cfg.get("train_cfg")
    if not isinstance(train_cfg, dict) or "max_epochs" in train_cfg or "max_iters" in train_cfg:
        return []
    loop = type_name(train_cfg) or "the default train loop"
    runner = f" under runner_type={cfg['runner_type']}" if cfg.get("runner_type") else ""
    return [Finding(
        ERROR, "train_cfg",
        f"train_cfg ({loop}{runner}) sets neither max_epochs nor max_iters",
        "the runner, iteration-based LR schedules (convert_to_iter_based), the ETA and the "
        "checkpoint/val intervals read the loop's max_epochs/max_iters; without them the loop "
        "fails to build or runs with a wrong length (the 'epoch counts down' log)",
        "train_cfg = dict(by_epoch=True, max_epochs=N, val_interval=M) (or by_epoch=False, "
        "max_iters=N); a custom loop must set and expose max_epochs/max_iters",
    )]


CHECKS = (
    check_validation_pipeline_in_training,
    check_lr_scaling,
    check_dataset_metainfo,
    check_detection_classes,
    check_amp_classification_loss,
    check_rtmdet_assignment,
    check_mode_switch_epoch,
    check_mle_loss_weight,
    check_checkpoint_survival,
    check_loop_length,
)


def run_checks(target: Target) -> List[Finding]:
    """Every finding, errors first; none for a config that does not train."""
    if not target.trains:
        return []
    findings = [finding for check in CHECKS for finding in check(target)]
    return sorted(findings, key=lambda f: f.severity != ERROR)


# ----------------------------------------------------------------------------- report / CLI
def format_report(target: Target, findings: List[Finding]) -> str:
    total = target.nproc * target.batch_per_proc
    lines = [f"fastops doctor: {target.path} (total batch {target.nproc} x "
             f"{target.batch_per_proc} = {total})"]
    for finding in findings:
        lines += ["", f"[{finding.severity.upper()}] {finding.key}",
                  f"  problem: {finding.problem}",
                  f"  why:     {finding.why}",
                  f"  fix:     {finding.fix}"]
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    if not target.trains:
        lines += ["", "Not a training config (train_dataloader or train_cfg is unset): nothing to "
                  "check."]
    else:
        lines += ["", f"{errors} error(s), {warnings} warning(s)." if findings
                  else "No problems found."]
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastops doctor",
        description="Check an OpenMMLab training config for known pitfalls before training.")
    parser.add_argument("config", help="mmengine config file (mmpose::/mmdet:: bases allowed)")
    parser.add_argument("--nproc", type=_positive_int, default=1,
                        help="training processes (GPUs) the run will use (default 1)")
    parser.add_argument("--batch-per-proc", type=_positive_int, default=None,
                        help="batch per process (default train_dataloader.batch_size)")
    return parser.parse_args(argv)


def examine(path: str, nproc: int = 1, batch_per_proc: Optional[int] = None
            ) -> Tuple[Target, List[Finding]]:
    """Load the config at `path` and run every check for a launch of `nproc` processes.

    Raises DoctorError when the OpenMMLab stack is missing; mmengine's errors for unreadable
    configs propagate.
    """
    with warnings.catch_warnings():  # mm* import pkg_resources, which new setuptools deprecates
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        require_mm_stack()
        cfg = load_config(path)
        batch = batch_per_proc or lookup(cfg, "train_dataloader.batch_size") or 1
        target = Target(cfg, path, nproc, batch)
        return target, run_checks(target)


def main(argv: Optional[List[str]] = None) -> int:
    """Run every check on CONFIG and print the report; returns the exit status."""
    args = parse_args(argv)
    try:
        target, findings = examine(args.config, args.nproc, args.batch_per_proc)
    except DoctorError as err:
        print(f"fastops doctor: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # mmengine raises many kinds for unreadable configs
        print(f"fastops doctor: cannot load {args.config}: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 2
    print(format_report(target, findings))
    return 1 if any(f.severity == ERROR for f in findings) else 0
