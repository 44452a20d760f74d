"""The optimisation step's numerical guards: non-finite steps are skipped, divergence stops the run,
and the training layout gives correct gradients under bf16."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dabnet_lib.engine as engine
from dabnet_lib.errors import DabnetError
from dabnet_lib.model import DABNet
from dabnet_lib.recipes import get_recipe
from dabnet_lib.step import GRAD_PROBE_TOLERANCE, train_step, training_memory_format


def _setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = DABNet(3).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    train_step(model, images, labels, torch.nn.CrossEntropyLoss(), opt, torch.amp.GradScaler("cpu", enabled=False))
    return model, opt, images, labels


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    moments = [t for s in opt.state.values() for t in (s["exp_avg"], s["exp_avg_sq"])]
    return [p.detach().clone() for p in model.parameters()] + [m.clone() for m in moments]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_non_finite_step_leaves_weights_and_adam_state_untouched(poison: str) -> None:
    model, opt, images, labels = _setup()
    before = _state(model, opt)
    if poison == "loss":
        def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, target) * float("nan")
    else:
        criterion = torch.nn.CrossEntropyLoss()
        handle = model.init_conv[0].conv.weight.register_hook(lambda g: g * float("inf"))
    loss, applied = train_step(model, images, labels, criterion, opt, torch.amp.GradScaler("cpu", enabled=False))
    assert not applied
    assert math.isfinite(float(loss)) == (poison == "gradient")
    after = _state(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    if poison == "gradient":
        handle.remove()
    loss, applied = train_step(model, images, labels, torch.nn.CrossEntropyLoss(), opt,
                               torch.amp.GradScaler("cpu", enabled=False))
    assert applied and not all(torch.equal(a, b) for a, b in zip(before, _state(model, opt)))


@pytest.mark.usefixtures("one_thread")
def test_chosen_bf16_layout_gives_correct_dilated_depthwise_gradients() -> None:
    """Whatever layout the probe picks for bf16 training, DABNet's dilated depthwise convolution
    gets weight gradients equal to fp32 up to bf16 rounding (the defect it guards against gives
    errors of 1e3..1e35)."""
    layout, note = training_memory_format(True, torch.bfloat16, torch.device("cpu"))
    assert (note is None) == (layout == torch.channels_last)
    conv = DABNet(3).DAB_Block_2.DAB_Module_2_1.ddconv3x1.conv  # 3x1, dilation 4, depthwise
    gen = torch.Generator().manual_seed(1)
    x, grad_out = torch.randn(8, 64, 45, 60, generator=gen), torch.randn(8, 64, 45, 60, generator=gen)
    ref_conv = copy.deepcopy(conv)
    (ref_conv(x) * grad_out).sum().backward()
    for _ in range(5):
        test_conv = copy.deepcopy(conv).to(memory_format=layout)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = test_conv(x.contiguous(memory_format=layout))
        (y.float() * grad_out).sum().backward()
        err = float((test_conv.weight.grad - ref_conv.weight.grad).abs().max() / ref_conv.weight.grad.abs().max())
        assert err <= GRAD_PROBE_TOLERANCE, (layout, err)


def test_fp32_keeps_channels_last_and_a_broken_probe_switches_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert training_memory_format(True, None, torch.device("cpu")) == (torch.channels_last, None)
    assert training_memory_format(False, torch.bfloat16, torch.device("cpu")) == (torch.contiguous_format, None)
    import dabnet_lib.step as step
    monkeypatch.setattr(step, "bf16_channels_last_grad_error", lambda device_type="cpu": float("inf"))
    layout, note = training_memory_format(True, torch.bfloat16, torch.device("cpu"))
    assert layout == torch.contiguous_format and "channels_last off" in note and "inf" in note
    monkeypatch.setattr(step, "bf16_channels_last_grad_error", lambda device_type="cpu": 0.004)
    assert training_memory_format(True, torch.bfloat16, torch.device("cpu")) == (torch.channels_last, None)


def test_skipped_steps_are_counted_and_divergence_stops_with_a_clear_error(
        camvid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.train_step
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # the 2nd step is non-finite, the rest are real
        calls["n"] += 1
        loss, applied = real(*args, **kwargs)
        return (torch.tensor(float("nan")), False) if calls["n"] == 2 else (loss, applied)

    monkeypatch.setattr(engine, "train_step", flaky)
    recipe = get_recipe("camvid", "smoke").replace(epochs=1, save_every=0)
    summary = engine.fit(recipe, camvid_root, tmp_path / "one", quiet=True)
    (row,) = summary["metrics"]
    assert row["skipped_steps"] == 1 and row["iteration"] == 2 and math.isfinite(row["loss"])

    monkeypatch.setattr(engine, "train_step", lambda *a, **k: (torch.tensor(float("inf")), False))
    with pytest.raises(DabnetError, match=r"training diverged: 20 steps in a row .*amp=off"):
        engine.fit(recipe.replace(epochs=12), camvid_root, tmp_path / "diverged", quiet=True)
