# The fastops part of every configs/rtmo config, merged into the stock head by each of them as
# model = dict(head={{_base_.fastops_rtmo_head}}): FastRTMOHead (batched fused SimOTA, the
# log-space MLE loss from the DCC logits; floor=1e-4 is the stock MLECCLoss(mode='log') clamp).
custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)
fastops_rtmo_head = dict(
    type='FastRTMOHead', assigner=dict(type='FusedSimOTAAssigner'), loss_mle=dict(type='LogMLECCLoss', floor=1e-4))
