# Tiny stock RTMO (mmpose RTMOHead) on the synthetic keypoint set, for CPU smoke runs and as the
# reference of rtmo_smoke.py (the same with fastops): 320x320 input, narrow backbone/neck, no
# pretrained weights, deterministic pipeline, iteration-based.
# Data: python -m fastops synth --out data/synth_keypoints --kind keypoints
_base_ = ['mmpose::body_2d_keypoint/rtmo/coco/rtmo-s_8xb32-600e_coco-640x640.py']

input_size = (320, 320)
widen_factor = 0.25
codec = dict(type='YOLOXPoseAnnotationProcessor', input_size=input_size)

train_pipeline = [
    dict(type='LoadImage'),
    dict(
        type='BottomupRandomAffine',
        input_size=input_size,
        shift_prob=0,
        rotate_prob=0,
        scale_prob=0,
        scale_type='long',
        pad_val=(114, 114, 114),
        bbox_keep_corner=False,
        clip_border=True),
    dict(type='FilterAnnotations', by_kpt=True, by_box=True, keep_empty=False),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='PackPoseInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    # no pause at the dataset's end, as DefaultSampler has under IterBasedTrainLoop
    sampler=dict(type='InfiniteSampler', shuffle=True),
    pin_memory=False,
    dataset=dict(
        data_root='data/synth_keypoints/',
        ann_file='annotations/train.json',
        data_prefix=dict(img='images/'),
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
optim_wrapper = dict(optimizer=dict(lr=2e-3))
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
    backbone=dict(widen_factor=widen_factor, init_cfg=None),
    neck=dict(
        in_channels=[64, 128, 256],
        widen_factor=widen_factor,
        hidden_dim=128,
        encoder_cfg=dict(
            self_attn_cfg=dict(embed_dims=128, num_heads=4),
            ffn_cfg=dict(embed_dims=128, feedforward_channels=256)),
        projector=dict(in_channels=[128, 128], out_channels=128)),
    head=dict(
        # RTMOHeadModule scales in_channels (256 -> 64, half of the projector's 128 output)
        # and cls_feat_channels by widen_factor; pose_vec_channels feeds the DCC.
        head_module_cfg=dict(pose_vec_channels=128, widen_factor=widen_factor),
        dcc_cfg=dict(in_channels=128, feat_channels=64, spe_channels=64,
                     gau_cfg=dict(s=64))),
    test_cfg=dict(input_size=input_size))
