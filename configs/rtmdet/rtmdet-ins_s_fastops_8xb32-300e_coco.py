# RTMDet-Ins-s on COCO with fastops: FastRTMDetInsSepBNHead (the targets of the whole batch from
# one fused dynamic soft-label assignment, distances to the masks' centres of mass as stock) and
# FusedDynamicSoftLabelAssigner (mmdet drop-ins). Everything else is the published mmdet config.
_base_ = ['mmdet::rtmdet/rtmdet-ins_s_8xb32-300e_coco.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(type='FastRTMDetInsSepBNHead'),
    train_cfg=dict(assigner=dict(type='FusedDynamicSoftLabelAssigner', topk=13)))
