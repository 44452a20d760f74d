"""The optimisation step's numerical guards: non-finite steps are skipped, divergence stops the run,
and the training layout gives correct gradients under bf16."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dabnet_lib.training.engine as engine
import dabnet_lib.training.epoch_loop as epoch_loop
from dabnet_lib.errors import DabnetError
from dabnet_lib.model.dabnet import DABNet
from dabnet_lib.training.recipes import get_recipe
from dabnet_lib.training.run_builder import build_optimizer
from dabnet_lib.training.step import GRAD_PROBE_TOLERANCE, train_step, training_layout


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
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    if poison == "gradient":
        handle.remove()
    loss, applied = train_step(
        model, images, labels, torch.nn.CrossEntropyLoss(), opt, torch.amp.GradScaler("cpu", enabled=False)
    )
    assert applied and not all(torch.equal(a, b) for a, b in zip(before, _state(model, opt), strict=True))


def _dilated_conv_grad_errors(layout, compiled: bool, repeats: int) -> list[float]:
    """Relative weight-gradient errors (vs fp32) of DABNet's dilated depthwise 3x1 conv trained
    under bf16 autocast in ``layout`` (a TrainingLayout), eager or compiled with its options."""
    conv = DABNet(3).DAB_Block_2.DAB_Module_2_1.ddconv3x1.conv  # 3x1, dilation 4, depthwise, 64 channels
    gen = torch.Generator().manual_seed(1)
    x, grad_out = torch.randn(8, 64, 45, 60, generator=gen), torch.randn(8, 64, 45, 60, generator=gen)
    ref_conv = copy.deepcopy(conv)
    (ref_conv(x) * grad_out).sum().backward()
    test_conv = copy.deepcopy(conv).to(memory_format=layout.memory_format)
    run = torch.compile(test_conv, dynamic=False, options=layout.compile_options) if compiled else test_conv
    errors = []
    for _ in range(repeats):
        test_conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(x.contiguous(memory_format=layout.memory_format))
        (y.float() * grad_out).sum().backward()
        errors.append(
            float((test_conv.weight.grad - ref_conv.weight.grad).abs().max() / ref_conv.weight.grad.abs().max())
        )
    return errors


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("requested", [True, False], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_chosen_bf16_layout_gives_correct_dilated_depthwise_gradients(compiled: bool, requested: bool) -> None:
    """Whatever layout the probe picks for bf16 training, DABNet's dilated depthwise convolution
    gets weight gradients equal to fp32 up to bf16 rounding, eager and inside torch.compile (the
    defect it guards against gives errors of 1e0..1e35, and inductor converts to channels_last on
    its own unless told not to, also when NCHW was requested: the autotuner's "bf16 NCHW compiled")."""
    layout = training_layout(requested, torch.bfloat16, torch.device("cpu"))
    if requested:
        assert (layout.note is None) == (layout.memory_format == torch.channels_last)
    errors = _dilated_conv_grad_errors(layout, compiled, repeats=3 if compiled else 5)
    assert all(e <= GRAD_PROBE_TOLERANCE for e in errors), (layout, errors)


def test_fp32_keeps_channels_last_and_a_broken_probe_switches_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert training_layout(True, None, cpu).memory_format == torch.channels_last
    assert training_layout(True, None, cpu).compile_options is None
    assert training_layout(False, torch.bfloat16, cpu).memory_format == torch.contiguous_format
    import dabnet_lib.training.step as step

    monkeypatch.setattr(step, "bf16_channels_last_grad_error", lambda device_type="cpu": float("inf"))
    refused = training_layout(True, torch.bfloat16, cpu)
    assert refused.memory_format == torch.contiguous_format and "channels_last off" in refused.note
    assert refused.compile_options == {"layout_optimization": False} and "inf" in refused.note
    nchw = training_layout(False, torch.bfloat16, cpu)  # NCHW asked for: no note, but inductor still told
    assert nchw.note is None and nchw.compile_options == {"layout_optimization": False}
    monkeypatch.setattr(step, "bf16_channels_last_grad_error", lambda device_type="cpu": 0.004)
    assert training_layout(True, torch.bfloat16, cpu).memory_format == torch.channels_last


@pytest.mark.slow
def test_skipped_steps_are_counted_and_divergence_stops_with_a_clear_error(
    camvid_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = epoch_loop.train_step
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # the 2nd step is non-finite, the rest are real
        calls["n"] += 1
        loss, applied = real(*args, **kwargs)
        return (torch.tensor(float("nan")), False) if calls["n"] == 2 else (loss, applied)

    monkeypatch.setattr(epoch_loop, "train_step", flaky)
    recipe = get_recipe("camvid", "smoke").replace(epochs=1, save_every=0)
    summary = engine.fit(recipe, camvid_tiny, tmp_path / "one", quiet=True)
    (row,) = summary["metrics"]
    assert row["skipped_steps"] == 1 and row["iteration"] == 2 and math.isfinite(row["loss"])

    monkeypatch.setattr(epoch_loop, "train_step", lambda *a, **k: (torch.tensor(float("inf")), False))
    with pytest.raises(DabnetError, match=r"training diverged: 20 steps in a row .*amp=off"):
        engine.fit(recipe.replace(epochs=12), camvid_tiny, tmp_path / "diverged", quiet=True)


@pytest.mark.usefixtures("one_thread")
def test_a_step_the_grad_scaler_skips_is_reported_as_not_applied() -> None:
    """fp16 + GradScaler (here the CPU scaler, the same class CUDA uses): a step whose scaled gradients hold
    inf is skipped by the scaler; train_step reports it as not applied (a device flag), weights and Adam state
    stay, the scale drops; the next clean step is applied."""
    model, opt, images, labels = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before, scale = _state(model, opt), scaler.get_scale()
    handle = model.init_conv[0].conv.weight.register_hook(lambda g: g * float("inf"))
    loss, applied = train_step(model, images, labels, torch.nn.CrossEntropyLoss(), opt, scaler)
    handle.remove()
    assert isinstance(applied, torch.Tensor) and applied.dtype == torch.bool and not bool(applied)
    assert math.isfinite(float(loss)) and scaler.get_scale() < scale
    assert all(torch.equal(a, b) for a, b in zip(before, _state(model, opt), strict=True))
    loss, applied = train_step(model, images, labels, torch.nn.CrossEntropyLoss(), opt, scaler)
    assert bool(applied) and not all(torch.equal(a, b) for a, b in zip(before, _state(model, opt), strict=True))


class _SkippingScaler(torch.amp.GradScaler):
    """A real (CPU) GradScaler whose steps 2, 3, ... find inf gradients, as fp16 overflow would on CUDA."""

    calls = 0

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        super().unscale_(optimizer)
        type(self).calls += 1
        if type(self).calls >= 2:
            for found in self._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values():
                found.fill_(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("sync_every", [1, 3])
def test_grad_scaler_skips_are_counted_kept_out_of_the_mean_and_stop_the_run(
    camvid_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_every: int
) -> None:
    """The engine with an enabled GradScaler: skipped steps count in skipped_steps, their (NaN-free but
    unapplied) losses stay out of the loss mean, and 20 in a row stop the run; also when the host reads the
    step flags only every ``sync_every`` iterations (as on CUDA)."""
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: _SkippingScaler(device))
    monkeypatch.setitem(epoch_loop.HOST_SYNC_EVERY, "cpu", sync_every)
    _SkippingScaler.calls = 0
    seen: list[float] = []
    real_step = epoch_loop.train_step

    def recording(*args, **kwargs):
        loss, applied = real_step(*args, **kwargs)
        seen.append(float(loss))
        return loss, applied

    monkeypatch.setattr(epoch_loop, "train_step", recording)
    recipe = get_recipe("camvid", "smoke").replace(epochs=1, save_every=0, val_every=0)
    summary = engine.fit(recipe, camvid_tiny, tmp_path / "one", quiet=True)
    (row,) = summary["metrics"]
    assert row["iteration"] == 2 and row["skipped_steps"] == 1
    assert row["loss"] == pytest.approx(seen[0])  # the mean of the one applied step
    _SkippingScaler.calls = 0
    with pytest.raises(DabnetError, match=r"training diverged: 20 steps in a row .*\(iteration 21\)"):
        engine.fit(recipe.replace(epochs=30), camvid_tiny, tmp_path / "diverged", quiet=True)


def _train_four_steps(make_opt: object) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = DABNet(3).train()
    opt = make_opt(model.parameters())  # type: ignore[operator]
    gen = torch.Generator().manual_seed(1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(4):
        images, labels = torch.randn(2, 3, 32, 32, generator=gen), torch.randint(0, 3, (2, 32, 32), generator=gen)
        train_step(model, images, labels, torch.nn.CrossEntropyLoss(), opt, scaler)
    return [p.detach().clone() for p in model.parameters()]


def _four_updates_on_fixed_gradients(make_opt: object) -> list[torch.Tensor]:
    """Four optimizer steps on DABNet(3)'s parameters with the same seeded random gradients for every
    optimizer (no forward pass, so a rounding difference is not amplified by re-computed gradients)."""
    torch.manual_seed(0)
    params = list(DABNet(3).parameters())
    opt = make_opt(params)  # type: ignore[operator]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizer_runs_all_tensors_at_once_with_the_per_tensor_loops_values(optimizer: str) -> None:
    recipe = get_recipe("camvid", "paper").replace(optimizer=optimizer, lr=1e-2)
    assert build_optimizer(recipe, DABNet(3).parameters()).defaults["foreach"] is True

    def loop(params: object) -> torch.optim.Optimizer:  # torch's CPU default: one tensor at a time
        kw = {"weight_decay": recipe.weight_decay, "foreach": False}
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=recipe.lr, betas=recipe.betas, eps=recipe.adam_eps, **kw)  # type: ignore[arg-type]
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, **kw)  # type: ignore[arg-type]

    reference = _train_four_steps(loop)
    grouped = _train_four_steps(lambda params: build_optimizer(recipe, params))
    assert all(torch.equal(a, b) for a, b in zip(grouped, reference, strict=True))  # bit for bit
    fused_recipe = recipe.replace(fused_optimizer=True)
    assert build_optimizer(fused_recipe, DABNet(3).parameters()).defaults["fused"] is True
    # The fused kernel orders its arithmetic differently: equal within fp32 rounding, i.e. at most 4 ulps of
    # (|parameter| + lr) per update, 16 after four (measured after four: 4.0 for Adam, 1.0 for SGD on a 2-core AMD
    # EPYC; through four training steps the re-computed gradients amplify the difference to 1.3e-5 there, a
    # figure that depends on the CPU's kernels).
    fused = _four_updates_on_fixed_gradients(lambda params: build_optimizer(fused_recipe, params))
    loop_ref = _four_updates_on_fixed_gradients(loop)
    ulp = torch.finfo(torch.float32).eps
    for a, b in zip(fused, loop_ref, strict=True):
        assert ((a - b).abs() <= 4 * 4 * ulp * (b.abs() + recipe.lr)).all()
