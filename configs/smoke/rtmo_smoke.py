# Tiny RTMO with fastops (FastRTMOHead: batched fused SimOTA, log-space MLE loss from the DCC
# logits) on the synthetic keypoint set: rtmo_smoke_stock.py with the model changes of
# configs/rtmo/. Data: python -m fastops synth --out data/synth_keypoints --kind keypoints
_base_ = ['./rtmo_smoke_stock.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

model = dict(
    head=dict(
        type='FastRTMOHead',
        assigner=dict(type='FusedSimOTAAssigner'),
        loss_mle=dict(type='LogMLECCLoss', floor=1e-4)))
