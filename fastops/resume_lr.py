"""Resume on another number of processes with the lr of the new total batch.

mmengine's ``auto_scale_lr`` scales the config's lr to the total batch (processes x batch per
process) when a run starts, but ``Runner.resume`` then loads the optimizer's param groups and
the schedulers' base lrs from the checkpoint, i.e. the lr scaled for the total batch the
checkpoint was trained at. ``TotalBatchHook`` records the total batch in every checkpoint's meta
and, on resume, multiplies what ``auto_scale_lr`` scaled by new total / checkpoint total.
"""
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict

WORLD_SIZE_KEY = "world_size"
TOTAL_BATCH_KEY = "total_batch_size"


def processes_and_batch(runner):
    """(processes, images per process) of this run, the two factors ``auto_scale_lr`` uses."""
    return runner.world_size, runner.cfg.train_dataloader.batch_size


def optim_wrappers(runner):
    wrapper = runner.optim_wrapper
    return list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]


def lr_schedulers(runner):
    schedulers = runner.param_schedulers or []
    if isinstance(schedulers, dict):
        schedulers = [scheduler for group in schedulers.values() for scheduler in group]
    return [scheduler for scheduler in schedulers if scheduler.param_name == "lr"]


def first_group(runner):
    return optim_wrappers(runner)[0].optimizer.param_groups[0]


def lr_summary(runner):
    group = first_group(runner)
    return f"lr {group['lr']:.6e} (schedule base {group.get('initial_lr', group['lr']):.6e})"


def rescale_lr(runner, ratio) -> None:
    """Multiplies what ``Runner.scale_lr`` scales, the optimizers' param groups, by ``ratio``:
    their ``lr`` and ``initial_lr``, and the lr schedulers' base values of those groups.
    ``OptimWrapper.base_param_settings`` (the unscaled lr mmengine logs as ``base_lr``, a
    pseudo group after the real ones) is left as a fresh run has it."""
    for wrapper in optim_wrappers(runner):
        for group in wrapper.optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
    for scheduler in lr_schedulers(runner):
        scaled = len(scheduler.optimizer.optimizer.param_groups)
        scheduler.base_values[:scaled] = [value * ratio for value in scheduler.base_values[:scaled]]


def adapt_lr_to_total_batch(runner, checkpoint_meta) -> None:
    """Logs the checkpoint's and this run's total batch and lr; with ``auto_scale_lr`` enabled
    and another total batch, rescales the resumed lr to this run's."""
    processes, per_process = processes_and_batch(runner)
    total = processes * per_process
    saved_total = checkpoint_meta.get(TOTAL_BATCH_KEY)
    if saved_total is None:
        runner.logger.warning("The resumed checkpoint does not record its total batch (not saved "
                              f"by fastops train); keeping its {lr_summary(runner)}")
        return
    saved_processes = checkpoint_meta[WORLD_SIZE_KEY]
    saved = (f"checkpoint: {saved_processes} processes x {saved_total // saved_processes} = total "
             f"batch {saved_total}, {lr_summary(runner)}")
    this_run = f"this run: {processes} processes x {per_process} = total batch {total}"
    if total == saved_total:
        runner.logger.info(f"Resuming at the same total batch. {saved}; {this_run}")
    elif not (runner.auto_scale_lr or {}).get("enable", False):
        runner.logger.warning(f"Resuming at another total batch with auto_scale_lr disabled: the "
                              f"lr stays as saved. {saved}; {this_run}")
    else:
        ratio = total / saved_total
        rescale_lr(runner, ratio)
        runner.logger.info(f"Resuming at another total batch: auto_scale_lr rescales the lr "
                           f"x{ratio:g}. {saved}; {this_run}, {lr_summary(runner)}")


class TotalBatchHook(Hook):
    """Records the run's processes and total batch in each checkpoint's meta (``world_size``,
    ``total_batch_size``); when the run resumes, adapts the resumed lr to its total batch."""

    def __init__(self):
        self.resumed_meta = None

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        processes, per_process = processes_and_batch(runner)
        checkpoint["meta"].update({WORLD_SIZE_KEY: processes,
                                   TOTAL_BATCH_KEY: processes * per_process})

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        if runner.cfg.get("resume"):  # a resume, not load_from's weights only
            self.resumed_meta = checkpoint["meta"]

    def before_train(self, runner) -> None:
        # after Runner.resume has loaded the optimizer and schedulers
        if self.resumed_meta is not None:
            adapt_lr_to_total_batch(runner, self.resumed_meta)
