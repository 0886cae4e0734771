# RTMDet-s on COCO with fastops: FastRTMDetSepBNHead (the targets of the whole batch from one
# fused dynamic soft-label assignment) and FusedDynamicSoftLabelAssigner (mmdet drop-ins). Everything
# else is the published mmdet config.
_base_ = ['mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(type='FastRTMDetSepBNHead'),
    train_cfg=dict(assigner=dict(type='FusedDynamicSoftLabelAssigner', topk=13)))
