# Tiny stock RTMDet (mmdet's RTMDetSepBNHead, DynamicSoftLabelAssigner, QualityFocalLoss, GIoULoss)
# on the synthetic detection set for CPU smoke runs: RTMDet-s at a quarter of its width, 320 input,
# no pretrained weights, no mosaic/mixup, no EMA or pipeline switch, iteration-based.
# configs/smoke/rtmdet_smoke.py is this config with the fastops drop-ins.
# Data: python -m fastops synth --out data/synth_detection --kind detection
_base_ = ['mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py']

classes = ('circle', 'square', 'triangle')
img_scale = (320, 320)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    # no pause at the dataset's end, as DefaultSampler has under IterBasedTrainLoop
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(
        _delete_=True,
        type='CocoDataset',
        data_root='data/synth_detection/',
        ann_file='annotations/train.json',
        data_prefix=dict(img='images/'),
        metainfo=dict(classes=classes),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=30)
# The smoke lr is meant for 2 processes x 4 images; auto_scale_lr keeps it there.
auto_scale_lr = dict(enable=True, base_batch_size=8)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=10, max_keep_ckpts=2,
        save_best=None))
log_processor = dict(by_epoch=False, window_size=1)
custom_hooks = []
randomness = dict(seed=0, deterministic=True)

# BN for the published SyncBN (same defaults) and no conversion to SyncBN (RTMDet's use_syncbn):
# PyTorch's SyncBatchNorm needs CUDA, so `fastops train --nproc 2` fails on CPU with it.
norm_cfg = dict(type='BN')
model = dict(
    use_syncbn=False,
    backbone=dict(widen_factor=0.125, init_cfg=None, norm_cfg=norm_cfg),
    neck=dict(in_channels=[32, 64, 128], out_channels=32, norm_cfg=norm_cfg),
    bbox_head=dict(num_classes=len(classes), in_channels=32, feat_channels=32, norm_cfg=norm_cfg))
