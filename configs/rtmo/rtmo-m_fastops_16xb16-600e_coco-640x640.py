# RTMO-M on COCO with FastRTMOHead: batched fused SimOTA and the log-space MLE loss
_base_ = ['mmpose::body_2d_keypoint/rtmo/coco/rtmo-m_16xb16-600e_coco-640x640.py', './_fastops_rtmo_.py']

# lr=0.004 is for 16 GPUs x 16 images; it scales with (processes x batch per process) / 256.
auto_scale_lr = dict(enable=True, base_batch_size=256)
default_hooks = dict(checkpoint=dict(
    type='CheckpointHook', interval=40, max_keep_ckpts=3, save_best='coco/AP', rule='greater'))
model = dict(head={{_base_.fastops_rtmo_head}})
