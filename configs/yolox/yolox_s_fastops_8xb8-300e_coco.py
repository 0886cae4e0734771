# YOLOX-s on COCO with fastops: FastYOLOXHead (one batched SimOTA assignment per batch), the fused
# SimOTA assigner and SafeCrossEntropyLoss for the class and objectness losses (mmdet drop-ins).
_base_ = ['mmdet::yolox/yolox_s_8xb8-300e_coco.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='FastYOLOXHead',
        loss_cls=dict(type='SafeCrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0),
        loss_obj=dict(type='SafeCrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='FusedSimOTAAssigner', center_radius=2.5)))

# lr=0.01 is for 8 GPUs x 8 images; it scales with (processes x batch per process) / 64.
auto_scale_lr = dict(enable=True, base_batch_size=64)

default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook',
        interval=10,
        max_keep_ckpts=3,
        save_best='coco/bbox_mAP',
        rule='greater'))
