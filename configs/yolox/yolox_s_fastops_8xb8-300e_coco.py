# YOLOX-s on COCO with the fused SimOTA assigner (mmdet drop-in).
_base_ = ['mmdet::yolox/yolox_s_8xb8-300e_coco.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
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
