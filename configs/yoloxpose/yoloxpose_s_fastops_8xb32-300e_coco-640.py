# YOLOX-Pose-s on COCO with FastYOLOXPoseHead: the training targets of the whole batch from one
# fused SimOTA call. Same model, data and schedule as the stock config.
_base_ = ['mmpose::body_2d_keypoint/yoloxpose/coco/yoloxpose_s_8xb32-300e_coco-640.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

# lr=0.004 is for 8 GPUs x 32 images; it scales with (processes x batch per process) / 256.
auto_scale_lr = dict(enable=True, base_batch_size=256)

default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook',
        interval=10,
        max_keep_ckpts=3,
        save_best='coco/AP',
        rule='greater'))

model = dict(head=dict(type='FastYOLOXPoseHead', assigner=dict(type='FusedSimOTAAssigner')))
