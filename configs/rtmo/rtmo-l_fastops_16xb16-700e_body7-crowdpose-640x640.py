# RTMO-L on CrowdPose with FastRTMOHead: batched fused SimOTA and the log-space MLE loss
_base_ = ['mmpose::body_2d_keypoint/rtmo/crowdpose/rtmo-l_16xb16-700e_body7-crowdpose-640x640.py', './_fastops_rtmo_.py']

# lr=0.004 is for 16 GPUs x 16 images; it scales with (processes x batch per process) / 256.
auto_scale_lr = dict(enable=True, base_batch_size=256)
default_hooks = dict(checkpoint=dict(
    type='CheckpointHook', interval=50, max_keep_ckpts=3, save_best='crowdpose/AP', rule='greater'))
model = dict(head={{_base_.fastops_rtmo_head}})
