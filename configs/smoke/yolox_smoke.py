# Tiny YOLOX with the fastops drop-ins on the synthetic detection set for CPU smoke runs: the stock
# smoke config (yolox_smoke_stock.py: 320 input, quarter width, no pretrained weights, no
# mosaic/mixup, iteration-based) with FastYOLOXHead, FusedSimOTAAssigner and SafeCrossEntropyLoss,
# as configs/yolox/yolox_s_fastops_8xb8-300e_coco.py changes the stock YOLOX-s.
# Data: python -m fastops synth --out data/synth_detection --kind detection
_base_ = ['./yolox_smoke_stock.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='FastYOLOXHead',
        loss_cls=dict(type='SafeCrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0),
        loss_obj=dict(type='SafeCrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='FusedSimOTAAssigner', center_radius=2.5)))
