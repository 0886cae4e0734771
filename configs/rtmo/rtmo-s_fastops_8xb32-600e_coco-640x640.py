# RTMO-s on COCO with the fused SimOTA assigner and the log-space MLECC loss.
_base_ = ['mmpose::body_2d_keypoint/rtmo/coco/rtmo-s_8xb32-600e_coco-640x640.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

# lr=0.004 is for 8 GPUs x 32 images; it scales with (processes x batch per process) / 256.
auto_scale_lr = dict(enable=True, base_batch_size=256)

default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook',
        interval=40,
        max_keep_ckpts=3,
        save_best='coco/AP',
        rule='greater'))

model = dict(
    head=dict(
        assigner=dict(type='FusedSimOTAAssigner'),
        # floor=1e-4 is the stock MLECCLoss(mode='log') clamp, computed in log space.
        loss_mle=dict(type='LogMLECCLoss', floor=1e-4)))
