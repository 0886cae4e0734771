# Tiny Faster R-CNN (SafeCrossEntropyLoss + AMP) on the synthetic detection set for CPU smoke
# runs: 320 input, ResNet-18 at a quarter width, no pretrained weights, deterministic
# pipeline, iteration-based. On CPU the launcher runs AMP as bfloat16 autocast.
# Data: python -m fastops synth --out data/synth_detection --kind detection
_base_ = ['../faster_rcnn/faster-rcnn_r50_fpn_safece-amp_1x_coco.py']

classes = ('circle', 'square', 'triangle')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    # no pause at the dataset's end, as DefaultSampler has under IterBasedTrainLoop
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_root='data/synth_detection/',
        ann_file='annotations/train.json',
        data_prefix=dict(img='images/'),
        metainfo=dict(classes=classes),
        pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=30)
# The smoke lr is meant for 2 processes x 2 images; auto_scale_lr keeps it there.
auto_scale_lr = dict(enable=True, base_batch_size=4)
optim_wrapper = dict(optimizer=dict(lr=0.02), clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=10, max_keep_ckpts=2,
        save_best=None))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0, deterministic=True)

model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=len(classes))))
