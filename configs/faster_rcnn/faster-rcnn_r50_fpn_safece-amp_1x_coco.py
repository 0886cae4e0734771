# Faster R-CNN R50-FPN 1x with mixed precision and the fp16-safe clamped cross-entropy in the
# RPN and RoI heads (num_clamped is logged as train/num_clamped).
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    rpn_head=dict(
        loss_cls=dict(
            type='SafeCrossEntropyLoss', use_sigmoid=True, loss_weight=1.0,
            clamp=100.0, clamp_grad='zero')),
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                type='SafeCrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                clamp=100.0, clamp_grad='zero'))))

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')

# lr=0.02 is for 8 GPUs x 2 images; it scales with (processes x batch per process) / 16.
auto_scale_lr = dict(enable=True, base_batch_size=16)

default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook',
        interval=1,
        max_keep_ckpts=3,
        save_best='coco/bbox_mAP',
        rule='greater'))
