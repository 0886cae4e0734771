# Tiny RTMDet with the fastops drop-ins on the synthetic detection set for CPU smoke runs: the
# stock smoke config (rtmdet_smoke_stock.py) with FastRTMDetSepBNHead and
# FusedDynamicSoftLabelAssigner, as configs/rtmdet/rtmdet_s_fastops_8xb32-300e_coco.py changes
# the stock RTMDet-s.
# Data: python -m fastops synth --out data/synth_detection --kind detection
_base_ = ['./rtmdet_smoke_stock.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(type='FastRTMDetSepBNHead'),
    train_cfg=dict(assigner=dict(type='FusedDynamicSoftLabelAssigner', topk=13)))
