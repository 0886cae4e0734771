# RTMO-M on CrowdPose with FastRTMOHead: batched fused SimOTA and the log-space MLE loss
# from the DCC logits. Same model, data and schedule as the stock config.
_base_ = ['mmpose::body_2d_keypoint/rtmo/crowdpose/rtmo-m_16xb16-700e_crowdpose-640x640.py']

custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)

# lr=0.004 is for 16 GPUs x 16-700e images; it scales with (processes x batch per process) / 256.
auto_scale_lr = dict(enable=True, base_batch_size=256)

default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook',
        interval=50,
        max_keep_ckpts=3,
        save_best='crowdpose/AP',
        rule='greater'))

model = dict(
    head=dict(
        type='FastRTMOHead',
        assigner=dict(type='FusedSimOTAAssigner'),
        # floor=1e-4 is the stock MLECCLoss(mode='log') clamp, computed in log space.
        loss_mle=dict(type='LogMLECCLoss', floor=1e-4)))
