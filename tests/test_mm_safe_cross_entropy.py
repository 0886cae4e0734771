"""SafeCrossEntropyLoss against mmdet 3.3.0's CrossEntropyLoss, over every argument combination."""
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

mmdet_losses = pytest.importorskip("mmdet.models.losses")
from mmengine.logging import MessageHub  # noqa: E402

import fastops.mm  # noqa: E402,F401
from mmdet.registry import MODELS  # noqa: E402

N, C = 64, 7

pytestmark = pytest.mark.usefixtures("mmdet_scope")
CONSTRUCTOR = dict(
    reduction=["none", "mean", "sum"],
    class_weight=[None, [0.5 + 0.25 * i for i in range(C)]],
    ignore_index=[None, 2],
    loss_weight=[1.0, 0.5],
    avg_non_ignore=[False, True],
)
FORWARD = dict(
    weight=[False, True],
    avg_factor=[None, 37.0],
    reduction_override=[None, "none", "mean", "sum"],
    ignore_index=[None, 1],
)


def combos(space):
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*space.values())]


def run(loss_module, logits, *args, **kwargs):
    x = logits.clone().requires_grad_()
    try:
        loss = loss_module(x, *args, **kwargs)
    except ValueError as err:  # e.g. avg_factor with reduction='sum' — must match stock
        return type(err), str(err)
    grad = torch.autograd.grad(loss.sum(), x)[0] if loss.requires_grad else torch.zeros_like(x)
    return loss.detach(), grad


def assert_same(got, want, context):
    if isinstance(want[0], type):
        assert got == want, context
        return
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6, msg=lambda m: f"loss {context}: {m}")
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-6, msg=lambda m: f"grad {context}: {m}")


def labels_for(use_sigmoid):
    labels = torch.randint(0, C + 1 if use_sigmoid else C, (N,))  # sigmoid: C = background
    labels[::6] = 2  # some rows hit the ignore_index values used above
    labels[1::9] = 1
    return labels


@pytest.mark.parametrize("use_sigmoid", [False, True])
def test_parity_with_mmdet_over_all_arguments(use_sigmoid):
    logits = torch.randn(N, C) * 3
    labels = labels_for(use_sigmoid)
    sample_weight = torch.rand(N)
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ctor in combos(CONSTRUCTOR):
            stock = MODELS.build(dict(type="CrossEntropyLoss", use_sigmoid=use_sigmoid, **ctor))
            safe = MODELS.build(dict(type="SafeCrossEntropyLoss", use_sigmoid=use_sigmoid, **ctor))
            for fwd in combos(FORWARD):
                kwargs = dict(fwd, weight=sample_weight if fwd["weight"] else None)
                assert_same(run(safe, logits, labels, **kwargs), run(stock, logits, labels, **kwargs),
                            f"ctor={ctor} forward={fwd}")
                checked += 1
    assert checked == len(combos(CONSTRUCTOR)) * len(combos(FORWARD))


def test_sigmoid_with_same_shape_targets_and_1d_pred():
    safe = MODELS.build(dict(type="SafeCrossEntropyLoss", use_sigmoid=True))
    stock = MODELS.build(dict(type="CrossEntropyLoss", use_sigmoid=True))
    logits, targets = torch.randn(N, C), torch.rand(N, C)
    assert_same(run(safe, logits, targets), run(stock, logits, targets), "soft targets")
    targets[::5, 0], targets[1::7, 2] = -1.0, 1.0  # negative targets are ignored, and so is ignore_index
    element_weight = torch.rand(N, C)
    for ignore_index, avg_non_ignore, reduction in itertools.product((None, 1), (False, True), ("none", "mean", "sum")):
        ctor = dict(type="SafeCrossEntropyLoss", use_sigmoid=True, ignore_index=ignore_index,
                    avg_non_ignore=avg_non_ignore, reduction=reduction)
        with warnings.catch_warnings():  # stock's advice on avg_non_ignore
            warnings.simplefilter("ignore")
            safe, stock = MODELS.build(ctor), MODELS.build(dict(ctor, type="CrossEntropyLoss"))
        for weight in (None, element_weight):
            assert_same(run(safe, logits, targets, weight=weight), run(stock, logits, targets, weight=weight),
                        f"ignored soft targets, ignore_index={ignore_index}, avg_non_ignore={avg_non_ignore}, "
                        f"reduction={reduction}, weighted={weight is not None}")
    logits_1d, targets_1d = torch.randn(N), torch.randint(0, 2, (N,)).float()
    assert_same(run(safe, logits_1d, targets_1d), run(stock, logits_1d, targets_1d), "1-D pred")


def test_use_mask_delegates_to_mmdet():
    safe = MODELS.build(dict(type="SafeCrossEntropyLoss", use_mask=True))
    stock = MODELS.build(dict(type="CrossEntropyLoss", use_mask=True))
    pred, target, label = torch.randn(4, 3, 5, 5), torch.rand(4, 5, 5), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(safe(pred, target, label), stock(pred, target, label))


def test_fp16_overflow_stock_fails_safe_is_finite_and_logged():
    logits = (torch.randn(N, C) * 4).half()
    logits[0, 0], logits[1, 1], logits[2, 2], logits[3, 3] = 65504, float("inf"), -float("inf"), -65504
    labels = torch.randint(0, C, (N,))
    stock = MODELS.build(dict(type="CrossEntropyLoss"))(logits.float(), labels)
    assert not torch.isfinite(stock)
    hub = MessageHub.get_instance("test_fp16_overflow")
    safe = MODELS.build(dict(type="SafeCrossEntropyLoss", clamp=100.0))
    loss = safe(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits.float().clamp(-100, 100), labels), atol=1e-6, rtol=1e-6)
    assert hub.get_scalar("train/num_clamped").current() == 4
    assert "train/num_clamped_nan" not in hub.log_scalars  # logged from the first NaN on
    logits[5, 0] = float("nan")
    safe(logits, labels)
    safe(logits.nan_to_num(0.0), labels)
    assert hub.get_scalar("train/num_clamped_nan").data[0].tolist() == [1, 0]


def test_log_key_none_logs_nothing():
    hub = MessageHub.get_instance("test_log_key_none")
    logits = torch.randn(N, C)
    logits[0, 0] = float("inf")
    for use_sigmoid in (False, True):
        safe = MODELS.build(dict(type="SafeCrossEntropyLoss", use_sigmoid=use_sigmoid, log_key=None))
        assert torch.isfinite(safe(logits, labels_for(use_sigmoid)))
    assert not hub.log_scalars


def test_constructor_rejects_bad_clamp_arguments():
    with pytest.raises(ValueError, match="clamp must be positive"):
        MODELS.build(dict(type="SafeCrossEntropyLoss", clamp=0))
    with pytest.raises(ValueError, match="clamp_grad"):
        MODELS.build(dict(type="SafeCrossEntropyLoss", clamp_grad="bogus"))


def test_out_of_range_label_is_an_error_not_a_silent_background():
    safe = MODELS.build(dict(type="SafeCrossEntropyLoss"))
    with pytest.raises(RuntimeError, match=r"labels\[3\] = 7 is out of range \[0, 7\)"):
        safe(torch.randn(5, C), torch.tensor([0, 1, 2, 7, 0]))


def test_empty_batch():
    for use_sigmoid in (False, True):
        safe = MODELS.build(dict(type="SafeCrossEntropyLoss", use_sigmoid=use_sigmoid, reduction="sum"))
        x = torch.empty(0, C, requires_grad=True)
        loss = safe(x, torch.empty(0, dtype=torch.long))
        assert loss.item() == 0
        loss.backward()
        assert x.grad.shape == (0, C)
