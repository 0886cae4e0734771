# Tiny RTMDet-Ins with the fastops drop-ins on the synthetic detection set for CPU smoke runs: the
# stock smoke config (rtmdet_ins_smoke_stock.py) with FastRTMDetInsSepBNHead and
# FusedDynamicSoftLabelAssigner, as configs/rtmdet/rtmdet-ins_s_fastops_8xb32-300e_coco.py changes
# the stock RTMDet-Ins-s.
# Data: python -m fastops synth --out data/synth_detection --kind detection
_base_ = ['./rtmdet_ins_smoke_stock.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(type='FastRTMDetInsSepBNHead'),
    train_cfg=dict(assigner=dict(type='FusedDynamicSoftLabelAssigner', topk=13)))
