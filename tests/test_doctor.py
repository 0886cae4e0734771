"""`fastops doctor`: each check fires on a config with the pitfall and stays quiet on the fix.

Configs are small files in tmp_path inheriting the stock mmpose / mmdet package configs, as a
user's would. Needs mmengine plus mmpose / mmdet (skipped otherwise); nothing is built.
"""
import glob
import os
import re
import subprocess
import sys
import textwrap

import pytest

from fastops import doctor

RTMO_S = "mmpose::body_2d_keypoint/rtmo/coco/rtmo-s_8xb32-600e_coco-640x640.py"
RTMO_M = "mmpose::body_2d_keypoint/rtmo/coco/rtmo-m_16xb16-600e_coco-640x640.py"
FASTER_RCNN = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"
YOLOX_S = "mmdet::yolox/yolox_s_8xb8-300e_coco.py"
RTMDET_S = "mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py"
RTMDET_INS_S = "mmdet::rtmdet/rtmdet-ins_s_8xb32-300e_coco.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The launches the stock configs were published with: the NxbB of their names; Faster R-CNN
# 1x, whose name has none, is 8 GPUs x 2 images (its auto_scale_lr.base_batch_size=16).
PUBLISHED_LAUNCH = {RTMO_S: (8, 32), RTMO_M: (16, 16), FASTER_RCNN: (8, 2), YOLOX_S: (8, 8), RTMDET_S: (8, 32),
                    RTMDET_INS_S: (8, 32)}

OWN_AUGMENT_PIPELINE = """[
    dict(type='LoadImage'),
    dict(type='BottomupRandomAffine', input_size=(640, 640), rotate_factor=10),
    dict(type='RandomFlip'),
    dict(type='GenerateTarget',
         encoder=dict(type='YOLOXPoseAnnotationProcessor', input_size=(640, 640))),
    dict(type='PackPoseInputs'),
]"""


def needs(base):
    pytest.importorskip("mmengine")
    pytest.importorskip(base.split("::")[0])


def write_config(tmp_path, base, body="", name="user_config.py"):
    path = tmp_path / name
    path.write_text(f"_base_ = ['{base}']\n" + textwrap.dedent(body))
    return str(path)


def diagnose(tmp_path, base, body="", launch=None):
    """Findings for a config inheriting `base`, launched as published unless `launch` is given."""
    needs(base)
    nproc, batch = launch or PUBLISHED_LAUNCH[base]
    _, findings = doctor.examine(write_config(tmp_path, base, body), nproc, batch)
    return findings


def keyed(findings, key_part):
    return [f for f in findings if key_part in f.key]


@pytest.mark.parametrize("base", [RTMO_S, RTMO_M, FASTER_RCNN, YOLOX_S])
def test_stock_configs_at_their_published_launch_are_clean(tmp_path, base):
    assert diagnose(tmp_path, base) == []


@pytest.mark.parametrize("base", [
    "mmdet::fast_rcnn/fast-rcnn_r50_fpn_1x_coco.py",  # RandomFlip inside ProposalBroadcaster
    "mmdet::htc/htc_r50_fpn_1x_coco.py",  # semantic_head.num_classes=183 counts stuff classes
    "mmpose::hand_2d_keypoint/rtmpose/coco_wholebody_hand/"
    "rtmpose-m_8xb32-210e_coco-wholebody-hand-256x256.py",  # a subset of coco_wholebody
    "mmpose::body_2d_keypoint/rtmpose/humanart/rtmpose-s_8xb256-420e_humanart-256x192.py",
    "mmdet::panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py",  # 80 thing + 53 stuff classes
    "mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py",  # fixed Resize, other augmentations
    # 2D-to-3D lifting has no image to augment: train and val pipelines are the same
    "mmpose::body_3d_keypoint/image_pose_lift/h36m/image-pose-lift_tcn_8xb64-200e_h36m.py",
])
def test_stock_configs_that_resemble_a_pitfall_have_no_error(tmp_path, base):
    launch = re.search(r"(\d+)xb(\d+)", base)
    findings = diagnose(tmp_path, base, launch=(int(launch[1]), int(launch[2])) if launch else (8, 2))
    assert [f for f in findings if f.severity == doctor.ERROR] == []


# ------------------------------------------------------------------ validation pipeline
def test_rtmo_trained_with_the_validation_pipeline(tmp_path):
    findings = diagnose(tmp_path, RTMO_S, """
        train_dataloader = dict(dataset=dict(pipeline=[
            dict(type='LoadImage'),
            dict(type='BottomupResize', input_size=(640, 640), pad_val=(114, 114, 114)),
            dict(type='GenerateTarget',
                 encoder=dict(type='YOLOXPoseAnnotationProcessor', input_size=(640, 640))),
            dict(type='PackPoseInputs'),
        ]))
    """)
    [finding] = findings
    assert finding.severity == doctor.ERROR
    assert finding.key == "train_dataloader.dataset.pipeline"
    assert "BottomupResize" in finding.problem
    for augmentation in ("Mosaic", "BottomupRandomAffine", "YOLOXMixUp"):
        assert augmentation in finding.problem and augmentation in finding.fix


def test_rtmo_with_its_own_augmentations_is_not_the_validation_pipeline(tmp_path):
    body = f"train_dataloader = dict(dataset=dict(pipeline={OWN_AUGMENT_PIPELINE}))\n"
    assert keyed(diagnose(tmp_path, RTMO_S, body), "pipeline") == []


def test_resize_plus_flip_still_counts_as_validation_pipeline(tmp_path):
    findings = diagnose(tmp_path, RTMO_S, """
        train_dataloader = dict(dataset=dict(pipeline=[
            dict(type='LoadImage'),
            dict(type='BottomupResize', input_size=(640, 640)),
            dict(type='RandomFlip'),
            dict(type='PackPoseInputs'),
        ]))
    """)
    assert [f.key for f in findings] == ["train_dataloader.dataset.pipeline"]


def test_faster_rcnn_trained_with_its_test_pipeline(tmp_path):
    findings = diagnose(tmp_path, FASTER_RCNN, """
        train_dataloader = dict(dataset=dict(pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(1333, 800), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs'),
        ]))
    """)
    [finding] = findings
    assert finding.key == "train_dataloader.dataset.pipeline" and "RandomFlip" in finding.fix


def test_self_contained_config_with_identical_pipelines(tmp_path):
    pytest.importorskip("mmengine")
    pipeline = "[dict(type='LoadImageFromFile'), dict(type='Resize'), dict(type='PackDetInputs')]"
    path = tmp_path / "plain.py"
    path.write_text(f"train_dataloader = dict(batch_size=2, dataset=dict(pipeline={pipeline}))\n"
                    f"val_dataloader = dict(batch_size=1, dataset=dict(pipeline={pipeline}))\n"
                    "train_cfg = dict(max_epochs=12)\n")
    _, findings = doctor.examine(str(path))
    assert [f.key for f in findings] == ["train_dataloader.dataset.pipeline"]
    assert "identical to val_dataloader" in findings[0].problem


# ------------------------------------------------------------------ lr scaling
def test_rtmo_on_one_process_gets_the_linearly_scaled_lr(tmp_path):
    [finding] = diagnose(tmp_path, RTMO_S, launch=(1, 32))
    assert finding.severity == doctor.WARNING
    assert finding.key == "optim_wrapper.optimizer.lr"
    assert "1 process(es) x 32 = 32" in finding.problem and "256" in finding.problem
    assert "lr=0.0005 " in finding.fix  # 0.004 x 32 / 256


def test_faster_rcnn_on_two_processes_of_four(tmp_path):
    [finding] = diagnose(tmp_path, FASTER_RCNN, launch=(2, 4))
    assert "auto_scale_lr is disabled" in finding.problem
    assert "lr=0.01 " in finding.fix  # 0.02 x 8 / 16


@pytest.mark.parametrize("body", [
    "auto_scale_lr = dict(enable=True, base_batch_size=256)\n",
    "optim_wrapper = dict(optimizer=dict(lr=0.0005))\n",  # already scaled by hand
    "auto_scale_lr = dict(base_batch_size=32)\n",
])
def test_scaled_or_auto_scaled_lr_is_quiet(tmp_path, body):
    assert diagnose(tmp_path, RTMO_S, body, launch=(1, 32)) == []


def test_missing_auto_scale_lr_falls_back_to_the_config_name(tmp_path):
    [finding] = diagnose(tmp_path, RTMO_S, "auto_scale_lr = None\n", launch=(2, 16))
    assert "(the 8xb32 launch of rtmo-s_8xb32-600e_coco-640x640.py)" in finding.problem
    assert "auto_scale_lr is missing" in finding.problem
    assert "lr=0.0005 " in finding.fix


def test_own_launch_name_does_not_excuse_the_inherited_lr(tmp_path):
    needs(RTMO_S)
    path = write_config(tmp_path, RTMO_S, name="rtmo-s_1xb32_mine.py")
    [finding] = doctor.examine(path, 1, 32)[1]
    assert "(auto_scale_lr.base_batch_size)" in finding.problem and "0.0005" in finding.fix
    retuned = write_config(tmp_path, RTMO_S, "optim_wrapper = dict(optimizer=dict(lr=0.001))\n"
                           "auto_scale_lr = None\n", name="rtmo-s_1xb32_retuned.py")
    assert doctor.examine(retuned, 1, 32)[1] == []  # this config set the lr for its 1xb32


def test_base_batch_size_that_contradicts_the_config_name_shows_both(tmp_path):
    body = "auto_scale_lr = dict(base_batch_size=128)\n"
    [finding] = diagnose(tmp_path, RTMO_S, body, launch=(1, 32))
    assert "the 8xb32 launch of rtmo-s_8xb32-600e_coco-640x640.py is 256" in finding.problem
    assert "lr=0.001 (= 0.004 x 32/128) (0.0005 (= 0.004 x 32/256) if tuned for 256)" in finding.fix
    assert diagnose(tmp_path, RTMO_S, body) == []  # the published 8 x 32 launch


# ------------------------------------------------------------------ dataset metainfo
def test_coco_annotations_with_crowdpose_metainfo(tmp_path):
    findings = diagnose(tmp_path, RTMO_S, """
        train_dataloader = dict(dataset=dict(
            metainfo=dict(from_file='configs/_base_/datasets/crowdpose.py')))
    """)
    names, count = [f for f in findings if f.severity == doctor.ERROR]
    assert names.key == count.key == "train_dataloader.dataset.metainfo"
    assert "coco annotation file" in names.problem and "crowdpose" in names.problem
    assert "14 keypoints" in count.problem and "num_keypoints=17" in count.problem


def test_head_keypoints_differ_from_dataset_and_oks_metainfo(tmp_path):
    findings = diagnose(tmp_path, RTMO_S, "model = dict(head=dict(num_keypoints=14))\n")
    assert sorted(f.key for f in findings) == [
        "model.head.assigner.oks_calculator.metainfo",
        "model.head.loss_oks.metainfo",
        "train_dataloader.dataset.metainfo",
        "val_dataloader.dataset.metainfo",
    ]
    assert all("17 keypoints" in f.problem for f in findings)


def test_crowdpose_everywhere_is_consistent(tmp_path):
    findings = diagnose(tmp_path, RTMO_S, """
        metafile = 'configs/_base_/datasets/crowdpose.py'
        train_dataloader = dict(dataset=dict(
            type='CrowdPoseDataset', ann_file='crowdpose/annotations/mmpose_crowdpose_trainval.json'))
        val_dataloader = dict(dataset=dict(
            type='CrowdPoseDataset', ann_file='crowdpose/annotations/mmpose_crowdpose_test.json'))
        model = dict(head=dict(num_keypoints=14, loss_oks=dict(metainfo=metafile),
                               assigner=dict(oks_calculator=dict(metainfo=metafile)),
                               loss_mle=dict(loss_weight=1e-3)))
    """)
    assert findings == []


@pytest.mark.parametrize("base, dataset_key, head_key", [
    (FASTER_RCNN, "dataset", "model.roi_head.bbox_head"),
    (YOLOX_S, "dataset.dataset", "model.bbox_head"),  # inside MultiImageMixDataset
])
def test_custom_classes_with_and_without_a_matching_head(tmp_path, base, dataset_key, head_key):
    override = "dict(metainfo=dict(classes=('balloon', 'kite')))"
    for level in reversed(dataset_key.split(".")):
        override = f"dict({level}={override})"
    body = f"train_dataloader = {override}\n"
    [finding] = diagnose(tmp_path, base, body)
    assert finding.severity == doctor.ERROR and finding.key == f"{head_key}.num_classes"
    assert "num_classes=80" in finding.problem and "2 class(es)" in finding.problem

    head = head_key.split(".")[1:]
    fixed = "dict(num_classes=2)"
    for level in reversed(head):
        fixed = f"dict({level}={fixed})"
    assert diagnose(tmp_path, base, body + f"model = {fixed}\n") == []


def test_class_agnostic_rpn_head_is_not_a_class_count(tmp_path):
    fcos_rpn = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_fcos-rpn_1x_coco.py"
    assert diagnose(tmp_path, fcos_rpn, launch=(8, 2)) == []  # rpn_head.num_classes=1


# ------------------------------------------------------------------ AMP + cross-entropy
def test_amp_faster_rcnn_flags_both_cross_entropy_losses(tmp_path):
    findings = diagnose(tmp_path, FASTER_RCNN, "optim_wrapper = dict(type='AmpOptimWrapper')\n")
    assert sorted(f.key for f in findings) == [
        "model.roi_head.bbox_head.loss_cls.type", "model.rpn_head.loss_cls.type"]
    assert all(f.severity == doctor.WARNING and "SafeCrossEntropyLoss" in f.fix for f in findings)


def test_amp_yolox_flags_cls_and_obj_losses(tmp_path):
    findings = diagnose(tmp_path, YOLOX_S, "optim_wrapper = dict(type='AmpOptimWrapper')\n")
    assert sorted(f.key for f in findings) == [
        "model.bbox_head.loss_cls.type", "model.bbox_head.loss_obj.type"]


def test_amp_with_safe_cross_entropy_is_quiet(tmp_path):
    findings = diagnose(tmp_path, FASTER_RCNN, """
        optim_wrapper = dict(type='AmpOptimWrapper')
        model = dict(rpn_head=dict(loss_cls=dict(type='SafeCrossEntropyLoss')),
                     roi_head=dict(bbox_head=dict(loss_cls=dict(type='SafeCrossEntropyLoss'))))
    """)
    assert findings == []


# ------------------------------------------------------------------ RTMO mode switch / MLE weight
# ------------------------------------------------------------------ RTMDet assignment
@pytest.mark.parametrize("base, fast_head", [(RTMDET_S, "FastRTMDetSepBNHead"),
                                             (RTMDET_INS_S, "FastRTMDetInsSepBNHead")])
def test_stock_rtmdet_gets_the_fastops_head_suggested(tmp_path, base, fast_head):
    findings = diagnose(tmp_path, base)
    assert [(f.severity, f.key) for f in findings] == [(doctor.WARNING, "model.bbox_head.type")]
    assert f"type='{fast_head}'" in findings[0].fix and "fastops.mm" in findings[0].fix
    assert "DynamicSoftLabelAssigner" in findings[0].problem and "#9616" in findings[0].why


def test_fastops_rtmdet_types_are_quiet(tmp_path):
    findings = diagnose(tmp_path, RTMDET_S, """
        custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)
        model = dict(bbox_head=dict(type='FastRTMDetSepBNHead'))
    """)
    assert findings == []  # the stock assigner name is fine: the fast head builds it fused


def test_stock_head_on_the_fused_assigner_is_quiet(tmp_path):
    findings = diagnose(tmp_path, RTMDET_S, """
        custom_imports = dict(imports=['fastops.mm'])
        model = dict(train_cfg=dict(assigner=dict(type='FusedDynamicSoftLabelAssigner')))
    """)
    assert findings == []


def test_fastops_rtmdet_types_without_the_import(tmp_path):
    findings = diagnose(tmp_path, RTMDET_S, """
        model = dict(bbox_head=dict(type='FastRTMDetSepBNHead'),
                     train_cfg=dict(assigner=dict(type='FusedDynamicSoftLabelAssigner')))
    """)
    assert sorted((f.severity, f.key) for f in findings) == [
        (doctor.ERROR, "model.bbox_head.type"), (doctor.ERROR, "model.train_cfg.assigner.type")]
    assert all("fastops.mm" in f.fix for f in findings)


def test_fast_rtmdet_head_with_another_assigner(tmp_path):
    findings = diagnose(tmp_path, RTMDET_S, """
        custom_imports = dict(imports=['fastops.mm'])
        model = dict(bbox_head=dict(type='FastRTMDetSepBNHead'),
                     train_cfg=dict(assigner=dict(_delete_=True, type='ATSSAssigner', topk=9)))
    """)
    assert [(f.severity, f.key) for f in findings] == [(doctor.ERROR, "model.train_cfg.assigner.type")]
    assert "ATSSAssigner" in findings[0].problem


def test_other_head_on_the_stock_assigner_gets_the_fused_assigner(tmp_path):
    findings = diagnose(tmp_path, YOLOX_S, """
        model = dict(train_cfg=dict(assigner=dict(_delete_=True, type='DynamicSoftLabelAssigner', topk=13)))
    """)
    assert [(f.severity, f.key) for f in findings] == [(doctor.WARNING, "model.train_cfg.assigner.type")]
    assert "type='FusedDynamicSoftLabelAssigner'" in findings[0].fix


def test_rotated_dynamic_soft_label_assignment_is_not_flagged(tmp_path):
    """RTMDet-R (mmrotate) assigns rotated boxes: fastops has no drop-in for it."""
    findings = diagnose(tmp_path, RTMDET_S, """
        model = dict(train_cfg=dict(assigner=dict(iou_calculator=dict(type='RBboxOverlaps2D'))))
    """)
    assert findings == []


def test_mode_switch_after_the_last_epoch(tmp_path):
    [finding] = diagnose(tmp_path, RTMO_S, "train_cfg = dict(max_epochs=100)\n")
    assert finding.severity == doctor.ERROR
    assert finding.key == "custom_hooks[1].epoch_attributes"
    assert "[280]" in finding.problem and "max_epochs=100" in finding.problem
    assert "e.g. 47 (= 280/600" in finding.fix


def test_mode_switch_within_the_run(tmp_path):
    assert diagnose(tmp_path, RTMO_S, "train_cfg = dict(max_epochs=300)\n") == []


def test_switch_changes_given_as_a_list(tmp_path):
    # the list form of the hook's own docstring example; its before_train_epoch calls .items()
    body = ("custom_hooks = [dict(type='RTMOModeSwitchHook',\n"
            "                     epoch_attributes={280: [{'proxy_target_cc': True}]})]\n")
    [finding] = diagnose(tmp_path, RTMO_S, body)
    assert finding.severity == doctor.ERROR
    assert finding.key == "custom_hooks[0].epoch_attributes[280]"
    assert "a list, not a dict" in finding.problem and "AttributeError" in finding.why


def test_switch_epoch_given_as_a_string(tmp_path):
    body = ("custom_hooks = [dict(type='RTMOModeSwitchHook',\n"
            "                     epoch_attributes={'280': {'proxy_target_cc': True}})]\n")
    [finding] = diagnose(tmp_path, RTMO_S, body)
    assert finding.key == "custom_hooks[0].epoch_attributes['280']"
    assert "never happens" in finding.why


@pytest.mark.parametrize("base, weight, published", [
    (RTMO_S, 1e-2, "1"), (RTMO_S, 20.0, "1"), (RTMO_M, 1.0, "0.01")])
def test_mle_weight_far_from_published(tmp_path, base, weight, published):
    body = f"model = dict(head=dict(loss_mle=dict(loss_weight={weight})))\n"
    [finding] = diagnose(tmp_path, base, body)
    assert finding.key == "model.head.loss_mle.loss_weight"
    assert f"published {published} of rtmo-{'s' if base == RTMO_S else 'm'}_" in finding.problem
    assert f"loss_weight={published})" in finding.fix


@pytest.mark.parametrize("base, weight", [(RTMO_S, 0.5), (RTMO_S, 5.0), (RTMO_M, 0.05)])
def test_mle_weight_within_ten_times(tmp_path, base, weight):
    body = f"model = dict(head=dict(loss_mle=dict(loss_weight={weight})))\n"
    assert diagnose(tmp_path, base, body) == []


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("base, body, problem", [
    (RTMO_S, "default_hooks = dict(checkpoint=dict(_delete_=True, type='CheckpointHook'))\n",
     "no interval (-1)"),
    (FASTER_RCNN, "default_hooks = dict(checkpoint=dict(interval=24))\n",
     "interval 24 epochs exceeds the run (12 epochs)"),
    (FASTER_RCNN, "train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=90000)\n",
     "the train loop is iteration-based"),
])
def test_checkpoint_without_a_usable_interval(tmp_path, base, body, problem):
    [finding] = keyed(diagnose(tmp_path, base, body), "checkpoint")
    assert finding.severity == doctor.ERROR and problem in finding.problem


def test_checkpoint_hook_disabled(tmp_path):
    [finding] = diagnose(tmp_path, FASTER_RCNN, "default_hooks = dict(checkpoint=None)\n")
    assert finding.key == "default_hooks.checkpoint" and "disabled" in finding.problem


def test_long_run_without_max_keep_ckpts(tmp_path):
    body = "default_hooks = dict(checkpoint=dict(interval=10, max_keep_ckpts=-1))\n"
    [finding] = diagnose(tmp_path, RTMO_S, body)
    assert finding.severity == doctor.WARNING
    assert finding.key == "default_hooks.checkpoint.max_keep_ckpts"
    assert "60 checkpoints" in finding.problem


def test_iteration_checkpoints_for_an_iteration_loop(tmp_path):
    findings = diagnose(tmp_path, FASTER_RCNN, """
        train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=90000)
        default_hooks = dict(checkpoint=dict(by_epoch=False, interval=5000, max_keep_ckpts=3))
    """)
    assert findings == []


# ------------------------------------------------------------------ loop length
@pytest.mark.parametrize("body, shown", [
    ("train_cfg = dict(_delete_=True, type='MyCurriculumLoop', val_interval=1)\n",
     "MyCurriculumLoop"),
    ("runner_type = 'MyRunner'\ntrain_cfg = dict(_delete_=True, by_epoch=True)\n",
     "runner_type=MyRunner"),
])
def test_loop_without_length(tmp_path, body, shown):
    [finding] = keyed(diagnose(tmp_path, FASTER_RCNN, body), "train_cfg")
    assert finding.severity == doctor.ERROR and shown in finding.problem


def test_custom_loop_with_length(tmp_path):
    body = "train_cfg = dict(_delete_=True, type='MyCurriculumLoop', max_epochs=12)\n"
    assert diagnose(tmp_path, FASTER_RCNN, body) == []


# ------------------------------------------------------------------ CLI
def test_main_exit_codes_and_report(tmp_path, capsys):
    needs(RTMO_S)
    broken = write_config(tmp_path, RTMO_S, "train_cfg = dict(max_epochs=100)\n")
    assert doctor.main([broken, "--nproc", "8"]) == 1
    report = capsys.readouterr().out
    assert "[ERROR] custom_hooks[1].epoch_attributes" in report
    assert "total batch 8 x 32 = 256" in report and "1 error(s), 0 warning(s)." in report

    assert doctor.main([broken.replace("user_config", "missing")]) == 2
    assert "cannot load" in capsys.readouterr().err

    warned = write_config(tmp_path, RTMO_S, name="warned.py")
    assert doctor.main([warned, "--batch-per-proc", "16"]) == 0  # a warning only
    assert "lr=0.00025 " in capsys.readouterr().out  # 0.004 x 16 / 256


def test_a_config_that_does_not_train_is_not_checked(tmp_path, capsys):
    sort = "mmdet::sort/sort_faster-rcnn_r50_fpn_8xb2-4e_mot17halftrain_test-mot17halfval.py"
    needs(sort)
    assert doctor.main([write_config(tmp_path, sort)]) == 0  # train_dataloader = None
    assert "Not a training config" in capsys.readouterr().out


def test_main_rejects_a_zero_process_count(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        doctor.main(["any.py", "--nproc", "0"])
    assert exit_info.value.code == 2


def test_missing_mm_stack_is_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mmengine", None)
    assert doctor.main(["any.py"]) == 2
    assert "needs the OpenMMLab stack" in capsys.readouterr().err


def test_importing_doctor_imports_no_mm_package():
    mm_packages = "('mmengine', 'mmcv', 'mmdet', 'mmpose')"
    code = ("import sys, fastops.doctor; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {mm_packages}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": REPO})
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------ the repo's configs
def repo_configs():
    paths = []
    for family in ("rtmo", "faster_rcnn", "yolox", "rtmdet"):
        paths += glob.glob(os.path.join(REPO, "configs", family, "*.py"))
    return sorted(p for p in paths if "smoke" not in os.path.basename(p))


@pytest.mark.parametrize("path", repo_configs() or [None],
                         ids=lambda p: os.path.basename(p) if p else "none")
def test_repo_configs_pass_cleanly(path):
    if path is None:
        pytest.skip("no configs under configs/ yet")
    needs("mmpose::" if "/rtmo/" in path else "mmdet::")
    launch = re.search(r"(\d+)xb(\d+)", os.path.basename(path))
    nproc, batch = (int(launch[1]), int(launch[2])) if launch else (1, None)
    _, findings = doctor.examine(path, nproc, batch)
    assert findings == []


FASTOPS_POSE_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "rtmo", "rtmo-*.py"))
                              + glob.glob(os.path.join(REPO, "configs", "yoloxpose", "*.py")))


FASTOPS_RTMDET_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "rtmdet", "*.py")))


@pytest.mark.parametrize("config", FASTOPS_RTMDET_CONFIGS, ids=os.path.basename)
def test_fastops_rtmdet_configs_load_clean_at_their_published_launch(config):
    """Loaded with mmengine's Config.fromfile (mmdet:: base), clean, and switched to the fastops types."""
    needs("mmdet::")
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    nproc, batch = re.search(r"_(\d+)xb(\d+)-", config).groups()
    target, findings = doctor.examine(config, int(nproc), int(batch))
    assert findings == []
    assert cfg.model.bbox_head.type in ("FastRTMDetSepBNHead", "FastRTMDetInsSepBNHead")
    assert target.cfg["model"]["train_cfg"]["assigner"]["type"] == "FusedDynamicSoftLabelAssigner"
    assert cfg.custom_imports.imports == ["fastops.mm"]


@pytest.mark.parametrize("config", FASTOPS_POSE_CONFIGS, ids=os.path.basename)
def test_fastops_pose_configs_are_clean_at_their_published_launch(config):
    needs("mmpose::")
    nproc, batch = re.search(r"_(\d+)xb(\d+)-", config).groups()
    target, findings = doctor.examine(config, int(nproc), int(batch))
    assert findings == []
    assert target.cfg["model"]["head"]["type"] in ("FastRTMOHead", "FastYOLOXPoseHead")
