# Tiny stock YOLOX (mmdet's YOLOXHead, SimOTAAssigner, CrossEntropyLoss) on the synthetic detection
# set for CPU smoke runs: 320 input, quarter width, no pretrained weights, no mosaic/mixup,
# iteration-based. configs/smoke/yolox_smoke.py is this config with the fastops drop-ins.
# Data: python -m fastops synth --out data/synth_detection --kind detection
_base_ = ['mmdet::yolox/yolox_s_8xb8-300e_coco.py']

classes = ('circle', 'square', 'triangle')
img_scale = (320, 320)
widen_factor = 0.25
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    # no pause at the dataset's end, as DefaultSampler has under IterBasedTrainLoop
    sampler=dict(type='InfiniteSampler', shuffle=True),
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

model = dict(
    data_preprocessor=dict(batch_augments=None),
    backbone=dict(widen_factor=widen_factor),
    neck=dict(in_channels=[64, 128, 256], out_channels=64),
    bbox_head=dict(num_classes=len(classes), in_channels=64, feat_channels=64))
