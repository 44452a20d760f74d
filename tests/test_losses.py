"""Losses: weighted CE equals PyTorch's, OHEM keeps exactly the hard pixels, all-ignored batches stay finite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dabnet_lib.errors import DabnetError
from dabnet_lib.training.losses import (
    LossConfigError,
    LovaszSoftmax,
    OhemCrossEntropy,
    WeightedCrossEntropy,
    WithLovasz,
    build_loss,
)

IGNORE = 255


def _batch(seed: int = 0, n: int = 2, c: int = 5, h: int = 6, w: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * 2
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.25] = IGNORE
    return logits, target


@pytest.mark.parametrize("weighted", [False, True])
def test_weighted_ce_equals_torch_cross_entropy(weighted):
    logits, target = _batch()
    weight = torch.tensor([0.5, 2.0, 1.0, 3.5, 0.1]) if weighted else None
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = WeightedCrossEntropy(weight, IGNORE)(ours_in, target)
    ref = F.cross_entropy(ref_in, target, weight=weight, ignore_index=IGNORE)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "loss",
    [
        WeightedCrossEntropy(None, IGNORE),
        OhemCrossEntropy(IGNORE, min_kept=10),
        LovaszSoftmax(IGNORE),
        WithLovasz(WeightedCrossEntropy(None, IGNORE), 1.0, IGNORE, stride=2),
    ],
)
def test_all_ignored_batch_is_finite_and_backward_works(loss):
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.full((2, 5, 5), IGNORE, dtype=torch.int64)
    value = loss(logits, target)
    assert value.dim() == 0 and torch.isfinite(value) and value.item() == 0.0
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad) == 0
    # torch's own mean CE is NaN here: the reason this case needs handling.
    assert torch.isnan(F.cross_entropy(logits.detach(), target, ignore_index=IGNORE))


def _known_probabilities(p_true: list[float], target_class: int = 0, c: int = 2):
    """Logits (1, C, 1, K) whose softmax gives the target class probability p_true[k] at pixel k."""
    p = torch.tensor(p_true, dtype=torch.float64)
    logits = torch.zeros(1, c, 1, len(p_true), dtype=torch.float64)
    rest = (1 - p) / (c - 1)
    for k in range(c):
        logits[0, k, 0] = torch.log(p if k == target_class else rest)
    target = torch.full((1, 1, len(p_true)), target_class, dtype=torch.int64)
    return logits, target


P = [0.1, 0.3, 0.5, 0.8, 0.9, 0.95]


def _mean_nll(ps: list[float]) -> float:
    return sum(-math.log(q) for q in ps) / len(ps)


def test_ohem_keeps_pixels_below_threshold():
    logits, target = _known_probabilities(P)
    loss = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=2)
    assert loss(logits, target).item() == pytest.approx(_mean_nll([0.1, 0.3, 0.5]))
    nll = F.cross_entropy(logits, target, reduction="none")
    kept = loss.kept_mask(nll, target != IGNORE)
    assert kept.reshape(-1).tolist() == [True, True, True, False, False, False]


def test_ohem_raises_threshold_to_keep_min_kept_hardest():
    logits, target = _known_probabilities(P)
    # Only 3 pixels are under 0.7; min_kept=5 raises the threshold to the 5th smallest (0.9).
    loss = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=5)
    assert loss(logits, target).item() == pytest.approx(_mean_nll([0.1, 0.3, 0.5, 0.8, 0.9]))
    # min_kept >= number of scored pixels: everything is kept (official rule).
    everything = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=6)
    assert everything(logits, target).item() == pytest.approx(_mean_nll(P))


def test_ohem_never_keeps_ignored_pixels_and_gradients_flow_only_to_kept():
    logits, target = _known_probabilities([0.01, *P])  # pixel 0 is the hardest, but ignored
    target[0, 0, 0] = IGNORE
    logits.requires_grad_(True)
    value = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=2)(logits, target)
    assert value.item() == pytest.approx(_mean_nll([0.1, 0.3, 0.5]))
    value.backward()
    grad_per_pixel = logits.grad.abs().sum(dim=1).reshape(-1)
    assert grad_per_pixel.nonzero().reshape(-1).tolist() == [1, 2, 3]


def test_ohem_weighted_mean_uses_class_weights_of_kept_pixels():
    c = 3
    logits = torch.zeros(1, c, 1, 4, dtype=torch.float64)
    target = torch.tensor([[[0, 1, 2, 2]]])
    probs = [0.2, 0.4, 0.6, 0.99]  # the last pixel is easy and dropped
    for k, (t, p) in enumerate(zip(target.reshape(-1).tolist(), probs, strict=True)):
        for j in range(c):
            logits[0, j, 0, k] = math.log(p if j == t else (1 - p) / (c - 1))
    weight = torch.tensor([1.0, 2.0, 4.0])
    value = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=1, weight=weight)(logits, target)
    expected = (1 * -math.log(0.2) + 2 * -math.log(0.4) + 4 * -math.log(0.6)) / (1 + 2 + 4)
    assert value.item() == pytest.approx(expected)


def test_ohem_with_nothing_hard_and_no_min_kept_is_zero_not_nan():
    logits, target = _known_probabilities([0.9, 0.95, 0.99])
    value = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=0)(logits, target)
    assert value.item() == 0.0


def test_ohem_without_mining_matches_plain_ce():
    # thresh=1 keeps every scored pixel: OHEM must equal the plain (weighted) CE.
    logits, target = _batch(seed=3)
    weight = torch.tensor([1.0, 0.5, 2.0, 1.5, 0.7])
    ohem = OhemCrossEntropy(IGNORE, thresh=1.0, min_kept=0, weight=weight)(logits, target)
    ref = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    assert ohem.item() == pytest.approx(ref.item(), rel=1e-5)


def test_build_loss_factory():
    ce = build_loss("ce", IGNORE, weight=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert isinstance(ce, WeightedCrossEntropy) and ce.weight.dtype == torch.float32
    ohem = build_loss("OHEM", 11, weight=np.ones(5), thresh=0.6, min_kept=7)
    assert isinstance(ohem, OhemCrossEntropy)
    assert (ohem.ignore_index, ohem.thresh, ohem.min_kept) == (11, 0.6, 7)
    logits, target = _batch()
    assert torch.isfinite(ce(logits, target))
    with pytest.raises(LossConfigError, match="unknown loss 'focal'"):
        build_loss("focal", IGNORE)
    with pytest.raises(LossConfigError, match="thresh"):
        build_loss("ce", IGNORE, thresh=0.7)
    with pytest.raises(DabnetError, match="unknown"):
        build_loss("ohem", IGNORE, min_keep=3)


def test_bad_arguments_are_clear_errors():
    logits, target = _batch()
    with pytest.raises(LossConfigError, match="3 class weights for 5 classes"):
        WeightedCrossEntropy(torch.ones(3), IGNORE)(logits, target)
    with pytest.raises(LossConfigError, match="differ in batch or spatial size"):
        WeightedCrossEntropy(None, IGNORE)(logits, target[:, :3])
    with pytest.raises(LossConfigError, match="thresh"):
        OhemCrossEntropy(IGNORE, thresh=1.5)
    with pytest.raises(LossConfigError, match=">= 0"):
        WeightedCrossEntropy(torch.tensor([1.0, -1.0]), IGNORE)


def test_losses_move_with_module_and_state_dict_roundtrip():
    loss = build_loss("ohem", IGNORE, weight=torch.arange(1.0, 6.0), min_kept=3)
    state = loss.state_dict()
    assert torch.equal(state["weight"], torch.arange(1.0, 6.0))
    loss = loss.to(torch.float64)
    logits, target = _batch()
    assert torch.isfinite(loss(logits.double(), target))


def _sorted_lovasz(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax written from its definition (errors sorted, Jaccard increments), classes present only."""
    classes = logits.shape[1]
    prob = logits.softmax(1).transpose(0, 1).reshape(classes, -1)
    labels = target.reshape(-1)
    keep = labels != IGNORE
    prob, labels = prob[:, keep], labels[keep]
    per_class = []
    for c in range(classes):
        fg = (labels == c).to(prob.dtype)
        if fg.sum() == 0:
            continue
        errors, order = torch.sort((fg - prob[c]).abs(), descending=True)
        fg_sorted = fg[order]
        inter = fg_sorted.sum() - fg_sorted.cumsum(0)
        union = fg_sorted.sum() + (1 - fg_sorted).cumsum(0)
        jaccard = 1 - inter / union
        rise = torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]))
        per_class.append(torch.dot(errors, rise))
    return torch.stack(per_class).mean()


def test_lovasz_equals_the_sorted_definition_in_value_and_gradient() -> None:
    # With 2**16 bins every one of these 84 pixels' errors lands in its own bin: the binned form is the sorted one.
    logits, target = _batch(seed=3)
    target[target == 4] = 3  # class 4 absent: it must not count
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = LovaszSoftmax(IGNORE, bins=2**16)(ours_in, target)
    ref = _sorted_lovasz(ref_in, target)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-4, atol=1e-7)


def test_lovasz_default_bins_stay_within_one_bin_of_the_sorted_value() -> None:
    logits, target = _batch(seed=4, n=2, c=6, h=40, w=50)
    loss = LovaszSoftmax(IGNORE)
    assert abs(loss(logits, target).item() - _sorted_lovasz(logits, target).item()) <= 1.0 / (loss.bins - 1)


def test_lovasz_on_hard_predictions_is_the_mean_one_minus_iou_of_present_classes() -> None:
    _, target = _batch(seed=5, h=12, w=12)
    g = torch.Generator().manual_seed(6)
    pred = torch.where(
        torch.rand(target.shape, generator=g) < 0.7, target.clamp(max=4), torch.randint(0, 5, target.shape, generator=g)
    )
    logits = F.one_hot(pred, 5).permute(0, 3, 1, 2).float() * 60.0  # softmax is one-hot to float precision
    valid = target != IGNORE
    ious = []
    for c in range(5):
        truth, guess = (target == c) & valid, (pred == c) & valid
        if truth.any():
            ious.append((truth & guess).sum().item() / (truth | guess).sum().item())
    assert LovaszSoftmax(IGNORE)(logits, target).item() == pytest.approx(1 - float(np.mean(ious)), abs=1e-6)
    perfect = F.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float() * 60.0
    assert LovaszSoftmax(IGNORE)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_with_lovasz_adds_the_weighted_term_on_its_pixel_grid() -> None:
    logits, target = _batch(seed=7, h=12, w=16)
    base = WeightedCrossEntropy(torch.tensor([0.5, 2.0, 1.0, 3.5, 0.1]), IGNORE)
    both = build_loss("ce", IGNORE, weight=[0.5, 2.0, 1.0, 3.5, 0.1], lovasz_weight=0.5, lovasz_stride=4)
    assert isinstance(both, WithLovasz) and both.stride == 4
    grid = LovaszSoftmax(IGNORE)(logits[:, :, 2::4, 2::4], target[:, 2::4, 2::4])
    assert both(logits, target).item() == pytest.approx((base(logits, target) + 0.5 * grid).item(), rel=1e-6)
    every = WithLovasz(base, 1.0, IGNORE, stride=1)
    full = LovaszSoftmax(IGNORE)(logits, target)
    assert every(logits, target).item() == pytest.approx((base(logits, target) + full).item(), rel=1e-6)
    assert isinstance(build_loss("ce", IGNORE, lovasz_weight=0.0), WeightedCrossEntropy)  # 0 = no Lovász term
    assert isinstance(build_loss("ohem", IGNORE, lovasz_weight=1.0, min_kept=3).base, OhemCrossEntropy)


def test_lovasz_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(LossConfigError, match="lovasz_weight"):
        build_loss("ce", IGNORE, lovasz_weight=-1.0)
    with pytest.raises(LossConfigError, match="stride"):
        build_loss("ce", IGNORE, lovasz_weight=1.0, lovasz_stride=0)
    with pytest.raises(LossConfigError, match="bins"):
        LovaszSoftmax(IGNORE, bins=1)
    logits, target = _batch()
    with pytest.raises(LossConfigError, match="differ in batch or spatial size"):
        LovaszSoftmax(IGNORE)(logits, target[:, :3])
    with pytest.raises(LossConfigError, match="use fewer bins"):
        LovaszSoftmax(IGNORE, bins=2**16)(torch.zeros(1, 128, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64))
