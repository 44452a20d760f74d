"""dabnet_lib.model.fast_ops: the fast depth-wise conv and PReLU equal the stock ops (forward and every
gradient), per op and for every DABNetConfig that test_model sweeps, in fp32 and bf16 autocast,
NCHW and channels_last, eager and compiled; the fused BN+PReLU equals the stock pair within fp32 rounding
(outputs, gradients, running statistics) and keeps the stock path wherever it does not apply; state-dict keys
and official logits unchanged."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dabnet_lib.machine import has_bf16_units
from dabnet_lib.model import fast_ops
from dabnet_lib.model.dabnet import BNPReLU, DABNet, DABNetConfig, load_weights
from dabnet_lib.model.fast_ops import (
    FastBNPReLU,
    FastDepthwiseConv2d,
    FastPReLU,
    count_fast_ops,
    is_eligible,
    use_fast_ops,
    uses_custom_backward,
)
from test_model import ablation_params

pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _run(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor, amp: bool = False) -> dict[str, torch.Tensor]:
    """Output, input gradient and every parameter gradient of ``(module(x) * upstream).sum()``."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = module(x)
    (y.float() * upstream).sum().backward()
    out = {"out": y.detach().float(), "input": x.grad}
    out.update({name: p.grad for name, p in module.named_parameters()})
    return out


# --------------------------------------------------------------------------- single ops

DW_CASES = [(k, shape, d) for k in (3, 5) for shape in ("kx1", "1xk", "kxk") for d in (1, 2, 4, 8, 16)]


def _dw_conv(channels: int, k: int, shape: str, d: int, bias: bool = False) -> nn.Conv2d:
    kernel = {"kx1": (k, 1), "1xk": (1, k), "kxk": (k, k)}[shape]
    dil = tuple(d if kk > 1 else 1 for kk in kernel)
    pad = tuple(dd * (kk - 1) // 2 for kk, dd in zip(kernel, dil, strict=True))
    return nn.Conv2d(channels, channels, kernel, 1, pad, dil, channels, bias=bias)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("k", "shape", "d"), DW_CASES, ids=[f"k{k}-{s}-d{d}" for k, s, d in DW_CASES])
def test_depthwise_conv_matches_stock(k: int, shape: str, d: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    stock = _dw_conv(6, k, shape, d, bias=d == 2)  # one dilation per kernel also checks the bias path
    fast = use_fast_ops(copy.deepcopy(stock))
    assert type(fast) is FastDepthwiseConv2d and uses_custom_backward(fast) == (d > 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 6, 20, 13).contiguous(memory_format=fmt)  # 13 < 16: some taps never overlap
    up = torch.randn(3, 6, 20, 13).contiguous(memory_format=fmt)
    ref, got = _run(stock, x, up), _run(fast, x, up)
    assert torch.equal(got["out"], ref["out"])  # the forward is the stock convolution
    for key in ref:
        assert _rel(got[key], ref[key]) < 1e-5, key


@pytest.mark.parametrize(("k", "shape", "d"), [(3, "kx1", 4), (5, "kxk", 2), (3, "1xk", 16)])
def test_depthwise_conv_matches_stock_under_bf16_autocast(k: int, shape: str, d: int) -> None:
    torch.manual_seed(0)
    stock = _dw_conv(8, k, shape, d)
    fast = use_fast_ops(copy.deepcopy(stock))
    x, up = torch.randn(2, 8, 24, 30), torch.randn(2, 8, 24, 30)
    ref, got = _run(stock, x, up, amp=True), _run(fast, x, up, amp=True)
    assert got["out"].dtype == ref["out"].dtype
    assert torch.equal(got["out"], ref["out"])
    assert got["weight"].dtype == ref["weight"].dtype == torch.float32
    for key in ("input", "weight"):
        assert _rel(got[key], ref[key]) < 2e-2, key  # bf16 has an 8-bit mantissa


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("slopes", [1, 7])
def test_prelu_matches_stock_including_zeros(slopes: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    stock = nn.PReLU(slopes)
    with torch.no_grad():
        stock.weight.uniform_(-0.5, 0.8)
    fast = use_fast_ops(copy.deepcopy(stock))
    assert type(fast) is FastPReLU
    x = torch.randn(2, 7, 9, 11)
    x[x.abs() < 0.3] = 0.0  # exact zeros take the slope side in PyTorch's kernel
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, up = x.contiguous(memory_format=fmt), torch.randn(2, 7, 9, 11).contiguous(memory_format=fmt)
    ref, got = _run(stock, x, up), _run(fast, x, up)
    assert torch.equal(got["out"], ref["out"])
    assert torch.equal(got["input"], ref["input"])
    assert _rel(got["weight"], ref["weight"]) < 1e-5


@pytest.mark.slow  # inductor builds the fused kernel (about 45 s cold)
@pytest.mark.parametrize(
    ("dtype", "channels_last", "slopes"),
    [(torch.float32, False, 7), (torch.float32, True, 7), (torch.float32, False, 1), (torch.bfloat16, False, 7)],
    ids=["fp32-nchw", "fp32-nhwc", "fp32-one-slope", "bf16-nchw"],
)
def test_fused_prelu_backward_is_bit_identical_to_the_written_out_one(
    dtype: torch.dtype, channels_last: bool, slopes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fast_ops, "_fused_prelu_parts", None)
    monkeypatch.setattr(fast_ops, "FUSED_PRELU_MIN_ELEMENTS", 0)  # small tensors take the fused path too
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, grad = (torch.randn(2, 7, 9, 11).to(dtype).contiguous(memory_format=fmt) for _ in range(2))
    x[x.abs() < 0.3] = 0.0  # exact zeros take the slope side
    slope = (torch.rand(slopes) - 0.3).to(dtype).reshape(1, -1, 1, 1) if slopes > 1 else torch.rand(1).to(dtype)
    fused = fast_ops._prelu_grad_parts(grad, x, slope)
    assert fast_ops._fused_prelu_parts not in (None, False)  # the compiled pass ran
    for got, ref in zip(fused, fast_ops._prelu_grad_parts_eager(grad, x, slope), strict=True):
        assert got.dtype == ref.dtype and got.stride() == ref.stride()  # same layout: the slope sum's order
        assert torch.equal(got, ref)
    # the module's gradients through the fused path equal the written-out path's, bit for bit
    stock = nn.PReLU(slopes)
    with torch.no_grad():
        stock.weight.uniform_(-0.5, 0.8)
    fast = use_fast_ops(copy.deepcopy(stock))
    xf = x.float()
    fused_run = _run(fast, xf, grad.float())
    monkeypatch.setattr(fast_ops, "FUSED_PRELU_MIN_ELEMENTS", 1 << 62)
    written_run = _run(fast, xf, grad.float())
    for key in written_run:
        assert torch.equal(fused_run[key], written_run[key]), key


def _no_compiler(*_a: object, **_k: object) -> object:
    """A ``torch.compile`` stand-in whose compiled function fails as on a machine without a C++ toolchain."""

    def fail(*_x: object) -> None:
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    return fail


def test_fused_prelu_backward_falls_back_when_inductor_cannot_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_ops, "_fused_prelu_parts", None)
    monkeypatch.setattr(fast_ops, "FUSED_PRELU_MIN_ELEMENTS", 0)
    monkeypatch.setattr(torch, "compile", _no_compiler)
    x, grad, slope = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.rand(1, 3, 1, 1)
    with pytest.warns(RuntimeWarning, match="fused PReLU backward could not be built"):
        got = fast_ops._prelu_grad_parts(grad, x, slope)
    assert fast_ops._fused_prelu_parts is False  # not retried on every call
    for a, b in zip(got, fast_ops._prelu_grad_parts_eager(grad, x, slope), strict=True):
        assert torch.equal(a, b)


def test_prelu_bf16_autocast_matches_stock() -> None:
    torch.manual_seed(0)
    stock = nn.Sequential(_dw_conv(8, 3, "kx1", 2), nn.PReLU(8))
    fast = use_fast_ops(copy.deepcopy(stock))
    x, up = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    ref, got = _run(stock, x, up, amp=True), _run(fast, x, up, amp=True)
    assert torch.equal(got["out"], ref["out"])
    for key in ref:
        assert got[key].dtype == ref[key].dtype, key
        assert _rel(got[key], ref[key]) < 2e-2, key


def test_only_depthwise_same_padding_convs_are_eligible() -> None:
    assert is_eligible(_dw_conv(4, 3, "kx1", 2))
    assert not is_eligible(nn.Conv2d(4, 4, 3, 1, 1))  # dense
    assert not is_eligible(nn.Conv2d(4, 4, 3, 2, 1, groups=4))  # stride 2
    assert not is_eligible(nn.Conv2d(4, 4, 3, 1, 0, groups=4))  # not "same"
    assert not is_eligible(nn.Conv2d(4, 8, 3, 1, 1, groups=4))  # channel multiplier
    assert not is_eligible(nn.Conv2d(4, 4, 3, 1, 1, groups=4, padding_mode="reflect"))


def test_no_grad_and_eval_use_the_stock_path() -> None:
    fast = use_fast_ops(_dw_conv(4, 3, "kx1", 4))
    x = torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        y = fast(x)
    assert y.grad_fn is None and torch.equal(y, nn.Conv2d.forward(fast, x))


# --------------------------------------------------------------------------- whole model


def _model_grads(model: nn.Module, x: torch.Tensor, amp: bool = False, train: bool = True) -> dict[str, torch.Tensor]:
    """Logits and every parameter gradient of ``logits.square().mean()`` (train or eval mode)."""
    model.train(train).zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = model(x)
    y.float().square().mean().backward()
    return {"logits": y.detach().float(), **{n: p.grad for n, p in model.named_parameters()}}


def _fast_and_stock(cfg: DABNetConfig) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    stock = DABNet(5, cfg)
    return stock, use_fast_ops(copy.deepcopy(stock)), torch.randn(2, 3, 32, 48)


def _assert_within_3x_stock_error(
    got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]
) -> None:
    """Every fast gradient (``got``) is within 3x the stock's (``ref``) worst relative error against ``truth``."""
    stock_worst = max(_rel(ref[k], truth[k]) for k in truth)
    worse = {k: _rel(got[k], truth[k]) for k in truth if _rel(got[k], truth[k]) > 3 * stock_worst}
    assert not worse, f"fast gradients farther from float64 than 3x stock's worst {stock_worst:.1e}: {worse}"


@pytest.mark.parametrize("cfg", ablation_params(fast_knobs=1))
def test_every_ablation_config_fast_equals_stock(cfg: DABNetConfig) -> None:
    """Same math: in float64 (train mode) every gradient agrees to < 1e-8 relative (float64 rounding
    amplified by BatchNorm's batch statistics reaches ~1e-9; one float32 rounding inside an op shows
    as >= 1e-7); in fp32 eval mode (no batch statistics to amplify rounding) to fp32 tolerance."""
    stock, fast, x = _fast_and_stock(cfg)
    ref = _model_grads(copy.deepcopy(stock).double(), x.double())
    got = _model_grads(copy.deepcopy(fast).double(), x.double())
    assert max(_rel(got[k], ref[k]) for k in ref) < 1e-8
    ref, got = _model_grads(stock, x, train=False), _model_grads(fast, x, train=False)
    assert max(_rel(got[k], ref[k]) for k in ref) < 1e-4


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_paper_model_fp32_training_gradients_have_stock_precision(channels_last: bool) -> None:
    """Train mode, fp32, against the float64 truth: through BatchNorm's batch statistics (sums with
    cancellation) the *stock* fp32 gradients already differ from float64 by 1e-3..4e-3 relative on
    some BN weights, and which tensor is worst moves with the summation order (the fast ops sum in
    another order). So every fast gradient must be within 3x the stock's worst error of the same
    run (the float64 test above shows the math is the same): a wrong tap, slope or layout gives
    errors of order 1."""
    stock, fast, x = _fast_and_stock(DABNetConfig())
    truth = _model_grads(copy.deepcopy(stock).double(), x.double())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    ref = _model_grads(stock.to(memory_format=fmt), x)
    got = _model_grads(fast.to(memory_format=fmt), x)
    assert max(_rel(ref[k], truth[k]) for k in truth) < 1e-2  # the reference itself is sane
    _assert_within_3x_stock_error(got, ref, truth)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_paper_model_bf16_autocast_gradients_match_stock(channels_last: bool) -> None:
    """bf16 autocast. Eval mode (no batch statistics): every fast gradient agrees with stock within bf16
    precision (an 8-bit mantissa: 2e-2 relative) on every CPU; a wrong tap, slope or layout gives errors of
    order 1. Train mode: BatchNorm's batch statistics turn the BN weights' gradients into sums with heavy
    cancellation. Where the CPU has bf16 units, fast and stock run the same bf16 arithmetic there and agree
    within 2e-2. Where bf16 is emulated (e.g. an AVX2-only Zen3), the stock gradients of those BN weights are
    themselves up to ~56x their own size away from float64 and the two paths round differently, so there
    every fast gradient must be no farther from float64 than 3x the stock's worst, the rule of the fp32
    test above (training never runs bf16 on such CPUs: the autotuner refuses it)."""
    stock, fast, x = _fast_and_stock(DABNetConfig())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    stock, fast = stock.to(memory_format=fmt), fast.to(memory_format=fmt)
    ref = _model_grads(stock, x, amp=True, train=False)
    got = _model_grads(fast, x, amp=True, train=False)
    assert all(got[k].dtype == ref[k].dtype for k in ref)
    worst = max(ref, key=lambda k: _rel(got[k], ref[k]))
    assert _rel(got[worst], ref[worst]) < 2e-2, worst
    ref = _model_grads(stock, x, amp=True)
    got = _model_grads(fast, x, amp=True)
    if has_bf16_units():
        worst = max(ref, key=lambda k: _rel(got[k], ref[k]))
        assert _rel(got[worst], ref[worst]) < 2e-2, worst
    else:
        _assert_within_3x_stock_error(got, ref, _model_grads(copy.deepcopy(stock).double(), x.double()))


def test_swap_keeps_parameters_keys_and_reverts() -> None:
    model = DABNet(11)
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    use_fast_ops(model)
    counts = count_fast_ops(model)
    # paper net: 9 DAB modules x 4 depth-wise branch convs (half dilated) and 71 PReLUs
    assert counts == {"fast": 36, "custom_backward": 18, "prelu": 71, "bn_prelu": 0, "eligible_stock": 0}
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    use_fast_ops(model, bn_prelu=True)  # every BN+PReLU pair of the paper net
    assert count_fast_ops(model)["bn_prelu"] == 71 and list(model.state_dict()) == keys
    use_fast_ops(model, enabled=False)
    assert count_fast_ops(model)["fast"] == 0 and count_fast_ops(model)["eligible_stock"] == 36 + 71
    assert not any(isinstance(m, (FastDepthwiseConv2d, FastPReLU, FastBNPReLU)) for m in model.modules())


def test_standard_branch_convs_are_left_alone() -> None:
    model = use_fast_ops(DABNet(5, DABNetConfig(branch_conv="standard")))
    assert count_fast_ops(model)["fast"] == 0


def test_official_logits_reproduced_with_fast_ops(official_fixture_path: Path) -> None:
    official = torch.load(official_fixture_path, weights_only=True)
    model = use_fast_ops(DABNet(11))
    load_weights(model, official["model"])  # the official state dict loads into the fast model
    model.eval()
    image = official["input"].clone().requires_grad_(True)  # with grad: the custom ops run
    logits = model(image)
    assert logits.grad_fn is not None
    assert (logits - official["logits"]).abs().max().item() < 1e-4


@pytest.mark.slow
def test_compiles_without_graph_breaks() -> None:
    torch.manual_seed(0)
    stock = nn.Sequential(_dw_conv(8, 3, "kx1", 4), nn.PReLU(8), _dw_conv(8, 3, "1xk", 2))
    fast = use_fast_ops(copy.deepcopy(stock))
    compiled = torch.compile(fast, fullgraph=True, dynamic=False)  # fullgraph: a graph break raises
    x, up = torch.randn(2, 8, 12, 10), torch.randn(2, 8, 12, 10)
    ref = _run(stock, x, up)
    got = {k.replace("_orig_mod.", ""): v for k, v in _run(compiled, x, up).items()}
    assert got.keys() == ref.keys()
    for key in ref:
        assert _rel(got[key], ref[key]) < 1e-5, key


# --------------------------------------------------------------------------- fused BN+PReLU


def _bn_prelu_pair(channels: int = 6) -> tuple[BNPReLU, BNPReLU]:
    """A stock BNPReLU with non-trivial affine weights and slopes, and its fused copy."""
    torch.manual_seed(0)
    stock = BNPReLU(channels)
    with torch.no_grad():
        stock.bn.weight.uniform_(0.5, 1.5)
        stock.bn.bias.normal_()
        stock.acti.weight.uniform_(-0.2, 0.6)
    fused = use_fast_ops(copy.deepcopy(stock), bn_prelu=True)
    assert type(fused) is FastBNPReLU
    return stock, fused


def _two_steps(module: nn.Module, x: torch.Tensor, up: torch.Tensor, amp: bool = False) -> dict[str, torch.Tensor]:
    """Outputs and gradients of a second training step (the first moved the running statistics), then the buffers."""
    _run(module, x, up, amp)
    out = _run(module, x * 0.5 + 0.25, up, amp)
    return {**out, **{name: b.clone() for name, b in module.named_buffers()}}


@pytest.mark.slow  # inductor builds the fused function (about 30 s cold)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fused_bn_prelu_matches_the_stock_pair(channels_last: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_ops, "FUSED_BN_PRELU_MIN_ELEMENTS", 0)
    stock, fused = _bn_prelu_pair()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(4, 6, 17, 23) * 3 + 1).contiguous(memory_format=fmt)
    up = torch.randn(4, 6, 17, 23).contiguous(memory_format=fmt)
    ref, got = _two_steps(stock, x, up), _two_steps(fused, x, up)
    assert fast_ops._fused_bn_prelu not in (None, False)  # the compiled function ran
    assert got["out"].is_contiguous(memory_format=fmt)
    assert torch.equal(got["bn.num_batches_tracked"], ref["bn.num_batches_tracked"])
    assert got["bn.num_batches_tracked"].item() == 2
    worst = {k: _rel(got[k], ref[k]) for k in ref if k != "bn.num_batches_tracked"}
    assert max(worst.values()) < 1e-5, worst


@pytest.mark.slow  # inductor builds the fused function
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_paper_model_with_fused_bn_prelu_has_stock_precision(
    channels_last: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the fp32 test above: every gradient of the fused model within 3x the stock fp32 error against float64."""
    monkeypatch.setattr(fast_ops, "FUSED_BN_PRELU_MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    stock, x = DABNet(5), torch.randn(2, 3, 32, 48)
    fused = use_fast_ops(copy.deepcopy(stock), bn_prelu=True)
    truth = _model_grads(copy.deepcopy(stock).double(), x.double())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    ref = _model_grads(stock.to(memory_format=fmt), x)
    got = _model_grads(fused.to(memory_format=fmt), x)
    assert fast_ops._fused_bn_prelu not in (None, False)
    stock_worst = max(_rel(ref[k], truth[k]) for k in truth)
    assert stock_worst < 1e-2
    worse = {k: _rel(got[k], truth[k]) for k in truth if _rel(got[k], truth[k]) > 3 * stock_worst}
    assert not worse, f"fused gradients farther from float64 than 3x stock's worst {stock_worst:.1e}: {worse}"


@pytest.mark.slow  # inductor builds the fused function (once: its channels and sizes are symbolic)
@pytest.mark.parametrize("cfg", [p.values[0] for p in ablation_params(fast_knobs=99)])
def test_every_ablation_config_runs_every_bn_prelu_fused(cfg: DABNetConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every BN+PReLU pair of every config is swapped and takes the fused function; train-mode logits equal the
    stock model's to fp32 tolerance and every parameter gets a finite gradient. (Gradient precision against
    float64 is the paper-model test above: on some random configs at this size fp32 gradients of the stock
    model itself are off by more than 100% from float64, so a per-config bound there would test chaos.)"""
    monkeypatch.setattr(fast_ops, "FUSED_BN_PRELU_MIN_ELEMENTS", 0)
    calls: list[int] = []
    build = fast_ops._fused_bn_prelu_fn

    def counting() -> object:
        calls.append(1)
        return build()

    monkeypatch.setattr(fast_ops, "_fused_bn_prelu_fn", counting)
    torch.manual_seed(0)
    stock, x = DABNet(5, cfg), torch.randn(2, 3, 32, 48)
    fused = use_fast_ops(copy.deepcopy(stock), bn_prelu=True)
    pairs = sum(isinstance(m, BNPReLU) for m in stock.modules())
    assert count_fast_ops(fused)["bn_prelu"] == pairs > 0
    ref, got = _model_grads(stock, x), _model_grads(fused, x)
    assert len(calls) == pairs  # one fused call per pair in the forward
    assert _rel(got["logits"], ref["logits"]) < 1e-4
    assert all(torch.isfinite(got[k]).all() and got[k].shape == ref[k].shape for k in ref)


def test_fused_bn_prelu_keeps_the_stock_path_where_it_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small activations (the default threshold), eval mode, no grad, bf16 autocast and float64: bit for bit the
    unfused pair (BN, then the fast PReLU that use_fast_ops gives without bn_prelu), and the compiled function is
    never built."""
    monkeypatch.setattr(fast_ops, "_fused_bn_prelu", None)
    stock, fused = _bn_prelu_pair()
    stock = use_fast_ops(stock)  # the same PReLU module class as in the fused pair
    assert type(stock) is BNPReLU and type(stock.acti) is FastPReLU
    x, up = torch.randn(2, 6, 9, 11), torch.randn(2, 6, 9, 11)
    for amp in (False, True):
        ref, got = _two_steps(stock, x, up, amp), _two_steps(fused, x, up, amp)
        for key in ref:
            assert torch.equal(got[key], ref[key]), key
    monkeypatch.setattr(fast_ops, "FUSED_BN_PRELU_MIN_ELEMENTS", 0)
    stock.eval(), fused.eval()
    assert torch.equal(fused(x), stock(x))
    stock.train(), fused.train()
    with torch.no_grad():
        assert torch.equal(fused(x), stock(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(x), stock(x))
    assert torch.equal(copy.deepcopy(fused).double()(x.double()), copy.deepcopy(stock).double()(x.double()))
    assert fast_ops._fused_bn_prelu is None


def test_fused_bn_prelu_falls_back_when_inductor_cannot_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_ops, "_fused_bn_prelu", None)
    monkeypatch.setattr(fast_ops, "FUSED_BN_PRELU_MIN_ELEMENTS", 0)
    monkeypatch.setattr(torch, "compile", _no_compiler)
    stock, fused = _bn_prelu_pair()
    x, up = torch.randn(2, 6, 9, 11), torch.randn(2, 6, 9, 11)
    with pytest.warns(RuntimeWarning, match="fused BN\\+PReLU could not be built"):
        got = _two_steps(fused, x, up)
    assert fast_ops._fused_bn_prelu is False  # not retried on every call
    ref = _two_steps(stock, x, up)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key
