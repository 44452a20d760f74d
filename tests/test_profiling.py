"""dabnet_lib.deploy.profiling / inference_variants and the `dabnet fps` / `dabnet export` commands.

Small inputs (64x96) and few iterations; no timing assertions (timings belong to `dabnet fps`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dabnet_lib import cli
from dabnet_lib.data.datasets import CAMVID, CamVid
from dabnet_lib.data.transforms import normalize
from dabnet_lib.deploy.inference_rewrites import InferenceForward, upsample_bilinear
from dabnet_lib.deploy.inference_variants import (
    FP32_TOLERANCE,
    INT8_MIN_AGREEMENT,
    TORCHAO_PIP,
    VARIANTS,
    VariantError,
    count_batchnorms,
    fold_batchnorm,
    label_agreement,
    optimize,
    relative_difference,
)
from dabnet_lib.deploy.profiling import (
    benchmark,
    calibration_images,
    count_params,
    cpu_fp32_peak,
    flops,
    fp32_flops_per_cycle,
    measure,
    target_verdicts,
)
from dabnet_lib.model.dabnet import Conv, DABNet, DABNetConfig

SIZE = (64, 96)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them actually changes the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> DABNet:
    torch.manual_seed(0)
    return _randomise_bn(DABNet(11))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1)) * 60


def _run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


# --------------------------------------------------------------------------- params / FLOPs / measure


def test_flops_of_one_conv_equal_the_hand_count() -> None:
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    result = flops(conv, (32, 48))
    macs = 8 * 16 * 24 * 3 * 3 * 3  # out channels * out pixels * (in channels * kernel)
    assert result["flops"] == 2 * macs
    assert result["gmacs"] == pytest.approx(macs / 1e9)
    assert result["gflops"] == pytest.approx(2 * result["gmacs"])
    dw = nn.Conv2d(16, 16, (3, 1), padding=(1, 0), groups=16, bias=False)
    assert flops(dw, (10, 12), channels=16)["flops"] == 2 * 16 * 10 * 12 * 3


def test_flops_of_dabnet_are_the_sum_of_its_convolutions() -> None:
    net = DABNet(11).eval()
    expected = 0

    def hook(mod: nn.Conv2d, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal expected
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        expected += 2 * out.numel() * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 3, 72, 104))
    for h in handles:
        h.remove()
    result = flops(net, (72, 104))
    assert result["flops"] == expected
    assert result["paper_unit"] == "not stated in our sources"
    assert count_params(net) == sum(p.numel() for p in net.parameters())


def test_measure_reports_latency_fps_and_context() -> None:
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x * 2

    x = torch.zeros(3, 3, 20, 30)
    stats = measure(fn, x, warmup=2, iters=5)
    assert len(calls) == 7 and len(stats["times_ms"]) == 5
    assert stats["median_ms"] == pytest.approx(float(np.median(stats["times_ms"])))
    assert stats["p90_ms"] >= stats["median_ms"] > 0
    assert stats["fps"] == pytest.approx(3 * 1000 / stats["median_ms"])
    assert (stats["batch"], stats["resolution"], stats["torch"]) == (3, "20x30", torch.__version__)
    assert stats["threads"] == torch.get_num_threads() and stats["device"]
    with pytest.raises(ValueError, match=r"iters must be >= 1, got 0"):
        measure(fn, x, iters=0)


def test_calibration_images_are_mean_subtracted_training_images(camvid_tiny: Path) -> None:
    [native] = calibration_images(camvid_tiny, (360, 480), count=1)
    image, _ = CamVid(camvid_tiny, "train").load(0)
    assert torch.equal(native[0], normalize(image, CAMVID.official_mean))
    small = calibration_images(camvid_tiny, SIZE, count=3)
    assert len(small) == 3 and all(x.shape == (1, 3, *SIZE) and x.dtype == torch.float32 for x in small)


# --------------------------------------------------------------------------- folding and variants


def test_folding_is_exact_and_removes_every_bn_that_follows_a_conv(model: DABNet, images: torch.Tensor) -> None:
    before = count_batchnorms(model)
    with torch.no_grad():
        reference = model(images)
    folded = fold_batchnorm(model)
    cfg = model.config
    # stem 3 + per DAB module (3x3 conv + 4 branch convs) + the non-widening down-sampling block
    expected_folded = 3 + 5 * (cfg.blocks_1 + cfg.blocks_2) + 1
    assert before - count_batchnorms(folded) == expected_folded
    assert count_batchnorms(model) == before  # the original is untouched
    folded_convs = [m for m in folded.modules() if isinstance(m, Conv) and m.bn_prelu is not None]
    assert all(isinstance(m.bn_prelu.bn, nn.Identity) and m.conv.bias is not None for m in folded_convs)
    with torch.no_grad():
        out = folded(images)
        assert torch.equal(model(images), reference)
    assert relative_difference(reference, out) < 1e-5


def test_folding_handles_an_ablation_config(images: torch.Tensor) -> None:
    cfg = DABNetConfig(
        blocks_1=1, blocks_2=2, dilations_1=(2,), dilations_2=(4, 8), branches="local", dw_shape="square"
    )
    net = _randomise_bn(DABNet(5, cfg), seed=3)
    with torch.no_grad():
        assert relative_difference(net(images), fold_batchnorm(net)(images)) < 1e-5


def test_upsample_bilinear_equals_interpolate() -> None:
    x = torch.randn(2, 11, 7, 9, generator=torch.Generator().manual_seed(4))
    for size in ((56, 72), (21, 9), (7, 36), (30, 40)):  # x8, x3/x1, x1/x4, not a multiple (fallback)
        expected = torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False)
        got = upsample_bilinear(x, size)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "cfg",
    [DABNetConfig(), DABNetConfig(blocks_1=1, blocks_2=1, dilations_1=(2,), dilations_2=(4,), input_injection=False)],
)
def test_inference_forward_matches_the_model(cfg: DABNetConfig, images: torch.Tensor) -> None:
    net = _randomise_bn(DABNet(7, cfg), seed=5)
    with torch.no_grad():
        expected = net(images)
        assert torch.equal(InferenceForward(net, fast_upsample=False)(images), expected)
        assert relative_difference(expected, InferenceForward(net)(images)) < 1e-5


def test_inference_forward_refuses_another_network() -> None:
    with pytest.raises(TypeError, match=r"InferenceForward rewrites DABNet\.forward; got a Conv2d"):
        InferenceForward(nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize(
    "variant", ["eager", "channels_last", "folded", pytest.param("onnxruntime", marks=pytest.mark.slow)]
)
def test_fp32_variant_matches_eager(model: DABNet, images: torch.Tensor, variant: str) -> None:
    opt = optimize(model, variant, example_input=images, threads=2)
    assert opt.variant == variant and opt.parity["ok"] is True
    assert opt.parity["value"] <= FP32_TOLERANCE
    other = images.flip(-1) * 0.5  # a second input, not the one the check used
    with torch.no_grad():
        expected = model(other)
    out = opt(other)
    assert out.shape == (1, 11, *SIZE)
    assert relative_difference(expected, out) <= FP32_TOLERANCE


@pytest.mark.slow
def test_compiled_variant_matches_eager(model: DABNet, images: torch.Tensor) -> None:
    opt = optimize(model, "compiled", example_input=images)
    assert opt.parity["ok"] is True and opt.build_s > 0
    assert "freezing" in opt.notes and "InferenceForward" in opt.notes
    other = images * -0.7
    with torch.no_grad():
        expected = model(other)
    out = opt(other)
    assert out.shape == expected.shape
    assert relative_difference(expected, out) <= FP32_TOLERANCE


@pytest.mark.slow
def test_int8_variant(camvid_tiny: Path) -> None:
    torch.manual_seed(0)  # a shallow DABNet keeps the quantise + compile time of this test down
    net = DABNet(11, DABNetConfig(blocks_1=1, blocks_2=2, dilations_1=(2,), dilations_2=(4, 8))).eval()
    calibration = calibration_images(camvid_tiny, SIZE, count=2)
    check = calibration_images(camvid_tiny, SIZE, count=2, split="val")
    if importlib.util.find_spec("torchao") is None:
        # PT2E quantisation lives in torchao for torch >= 2.10: the variant must say what to install.
        with pytest.raises(VariantError, match=TORCHAO_PIP.replace(".", r"\.")):
            optimize(net, "int8", example_input=calibration[0], calibration=calibration)
        return
    opt = optimize(net, "int8", example_input=calibration[0], calibration=calibration, check_inputs=check)
    assert opt.parity["metric"] == "label_agreement_pct"
    with torch.no_grad():
        own = np.mean([label_agreement(net(x), opt(x)) for x in check])
    assert opt.parity["value"] == pytest.approx(own)
    assert opt.parity["ok"] == (own >= INT8_MIN_AGREEMENT)
    # random weights give near-tied logits, so exact agreement is not expected; a broken
    # quantisation (wrong scales, layouts) lands near chance, 100/11 %
    assert own >= 60.0
    with pytest.raises(VariantError, match="built for input"):
        opt(torch.zeros(1, 3, 32, 32))
    # batch 2: the single-image check inputs are regrouped into batches of the built shape
    pair = optimize(net, "int8", example_input=torch.cat(calibration), calibration=calibration, check_inputs=check)
    with torch.no_grad():
        both = torch.cat(check)
        assert pair.parity["value"] == pytest.approx(label_agreement(net(both), pair(both)))


def test_the_registry_keeps_the_cli_names_in_table_order() -> None:
    from dabnet_lib.deploy.gpu_timing import DEVICE_VARIANTS
    from dabnet_lib.deploy.inference_variants import INT8_VARIANTS, REGISTRY
    from dabnet_lib.deploy.profiling import FP32_VARIANTS, OUR_FP32_VARIANTS

    assert VARIANTS == (
        "eager",
        "channels_last",
        "folded",
        "compiled",
        "onnxruntime",
        "openvino",
        "int8",
        "openvino_int8",
    )
    assert INT8_VARIANTS == ("int8", "openvino_int8")
    assert DEVICE_VARIANTS == ("eager", "channels_last", "folded", "compiled", "fp16", "bf16")
    assert FP32_VARIANTS == ("channels_last", "folded", "compiled", "onnxruntime")
    assert OUR_FP32_VARIANTS == ("eager", "channels_last", "folded", "compiled")
    assert all(v.cpu is not None or v.device is not None for v in REGISTRY.values())


def test_unknown_variant_and_missing_calibration_raise(model: DABNet) -> None:
    with pytest.raises(VariantError, match="unknown variant 'turbo'.*" + ", ".join(VARIANTS)):
        optimize(model, "turbo")
    with pytest.raises(VariantError, match="calibration"):
        optimize(model, "int8")


# --------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_fps_json_has_every_requested_row(tmp_path: Path) -> None:
    code, out = _run_cli(
        [
            "fps",
            "64,96",
            "--variants",
            "eager,folded,warp9,int8,channels_last",
            "--iters",
            "3",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--threads",
            "2",
            "--data-root",
            str(tmp_path / "no_camvid"),
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["variant"] for r in rows] == ["eager", "folded", "warp9", "int8", "channels_last"]
    by = {r["variant"]: r for r in rows}
    for name in ("eager", "folded", "channels_last"):
        r = by[name]
        assert r["status"] == "ok" and r["ms"] > 0 and r["parity_ok"] is True
        assert r["fps"] == pytest.approx(1000 / r["ms"], rel=0.01)
        assert r["speedup"] == pytest.approx(by["eager"]["ms"] / r["ms"], rel=0.02)
        assert (r["resolution"], r["batch"], r["threads"]) == ("64x96", 1, 2)
    assert by["eager"]["speedup"] == 1.0
    assert by["warp9"]["status"] == "error" and "unknown variant 'warp9'" in by["warp9"]["error"]
    assert by["int8"]["status"] == "error" and "no_camvid" in by["int8"]["error"]
    assert all(r["ms"] is None for r in (by["warp9"], by["int8"]))


def test_fps_table_names_the_context() -> None:
    code, out = _run_cli(
        ["fps", "48,64", "--variants", "folded", "--iters", "2", "--warmup", "0", "--rounds", "1", "--quiet"]
    )
    assert code == 0
    lines = out.splitlines()
    assert "parameters" in lines[0] and "GFLOPs" in lines[0] and "GMACs" in lines[0]
    assert "threads" in lines[1] and "load average" in lines[1]
    assert any(line.startswith("eager ") for line in lines) and any(line.startswith("folded ") for line in lines)
    targets = [line for line in lines if line.startswith(("target ", "fp32 peak fraction"))]
    assert targets[0].startswith("target best fp32 variant >= 2.0x eager: folded ")
    assert targets[1] == "target int8 >= 3.0x eager: not measured (variant not run)"
    assert targets[2] == ("target our best fp32 vs OpenVINO fp32 >= 1.3x: not measured (variant not run or failed)")
    assert targets[4].startswith("fp32 peak fraction: ")


def test_target_verdicts_say_met_or_by_how_much_short() -> None:
    rows = [
        {"variant": "eager", "status": "ok", "speedup": 1.0},
        {"variant": "folded", "status": "ok", "speedup": 1.1},
        {"variant": "compiled", "status": "ok", "speedup": 2.2},
        {"variant": "onnxruntime", "status": "error", "speedup": None},
        {"variant": "int8", "status": "ok", "speedup": 2.85},
    ]
    assert target_verdicts(rows)[:2] == [
        "target best fp32 variant >= 2.0x eager: compiled 2.20x, met",
        "target int8 >= 3.0x eager: int8 2.85x, NOT met, 5.0% short",
    ]


def test_openvino_verdicts_compare_times_of_the_same_run() -> None:
    rows = [
        {"variant": "eager", "status": "ok", "speedup": 1.0, "ms": 100.0, "batch": 1, "threads": 2},
        {"variant": "compiled", "status": "ok", "speedup": 2.0, "ms": 50.0, "batch": 1, "threads": 2},
        {"variant": "onnxruntime", "status": "ok", "speedup": 4.0, "ms": 25.0, "batch": 1, "threads": 2},
        {"variant": "openvino", "status": "ok", "speedup": 1.6, "ms": 60.0, "batch": 1, "threads": 2},
        {"variant": "int8", "status": "ok", "speedup": 4.0, "ms": 25.0, "batch": 1, "threads": 2},
        {"variant": "openvino_int8", "status": "ok", "speedup": 5.0, "ms": 20.0, "batch": 1, "threads": 2},
    ]
    lines = target_verdicts(rows, gflops_per_image=6.73)
    # onnxruntime is not "ours": our best fp32 is compiled
    assert lines[2] == (
        "target our best fp32 vs OpenVINO fp32 >= 1.3x: compiled 50.0 ms vs openvino 60.0 ms = "
        "1.20x, NOT met, 7.7% short"
    )
    assert (
        lines[3] == "target our int8 vs OpenVINO int8 >= 1.0x: int8 25.0 ms vs openvino_int8 20.0 ms = 0.80x, "
        "NOT met, 20.0% short"
    )
    # the fastest fp32 row overall (onnxruntime, 25 ms): 6.73 GFLOP x 40/s = 269.2 GFLOP/s
    assert lines[4].startswith("fp32 peak fraction: onnxruntime reaches 269.2 GFLOP/s")
    peak = cpu_fp32_peak(2)
    if peak is not None:
        assert f"{100 * 269.2 / peak['gflops']:.1f}% of {peak['gflops']:.0f} GFLOP/s peak (2 threads" in lines[4]


def test_fp32_flops_per_cycle_follow_the_isa() -> None:
    assert fp32_flops_per_cycle({"avx512f", "avx2", "fma", "avx"}) == 64
    assert fp32_flops_per_cycle({"avx2", "fma", "avx"}) == 32  # Zen3
    assert fp32_flops_per_cycle({"avx"}) == 16
    assert fp32_flops_per_cycle(set()) == 8


# --------------------------------------------------------------------------- OpenVINO

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="the openvino extra is not installed: pip install -e '.[openvino]'",
)


def test_missing_openvino_gives_an_install_hint_and_others_still_run(
    monkeypatch: pytest.MonkeyPatch, model: DABNet
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(
        VariantError, match=r"openvino is not installed: pip install openvino==2026\.4\.1 nncf==3\.4\.0"
    ):
        optimize(model, "openvino", example_input=torch.zeros(1, 3, *SIZE))
    calibration = [torch.zeros(1, 3, *SIZE)]
    rows = benchmark(
        model, SIZE, "eager,openvino,openvino_int8", iters=1, warmup=0, rounds=1, threads=1, calibration=calibration
    )
    by = {r["variant"]: r for r in rows}
    assert by["eager"]["status"] == "ok" and by["eager"]["ms"] > 0
    for name in ("openvino", "openvino_int8"):
        assert by[name]["status"] == "error" and "not installed: pip install" in by[name]["error"]


@pytest.mark.slow
@needs_openvino
def test_openvino_variant_matches_eager(model: DABNet, images: torch.Tensor) -> None:
    opt = optimize(model, "openvino", example_input=images, threads=2)
    assert opt.parity["ok"] is True and opt.parity["metric"] == "max_rel_diff"
    other = images.flip(-1) * 0.5
    with torch.no_grad():
        expected = model(other)
    assert relative_difference(expected, opt(other)) <= FP32_TOLERANCE
    with pytest.raises(VariantError, match="built for input"):
        opt(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow
@needs_openvino
def test_openvino_int8_variant(camvid_tiny: Path) -> None:
    torch.manual_seed(0)
    net = DABNet(11, DABNetConfig(blocks_1=1, blocks_2=2, dilations_1=(2,), dilations_2=(4, 8))).eval()
    calibration = calibration_images(camvid_tiny, SIZE, count=2)
    check = calibration_images(camvid_tiny, SIZE, count=2, split="val")
    opt = optimize(
        net, "openvino_int8", example_input=calibration[0], calibration=calibration, check_inputs=check, threads=2
    )
    assert opt.parity["metric"] == "label_agreement_pct"
    with torch.no_grad():
        own = np.mean([label_agreement(net(x), opt(x)) for x in check])
    assert opt.parity["value"] == pytest.approx(own)
    assert own >= 60.0  # as for int8: a broken quantisation lands near chance (100/11 %)
    assert "2 calibration image(s)" in opt.notes
    with pytest.raises(VariantError, match="calibration"):
        optimize(net, "openvino_int8", example_input=calibration[0])


@pytest.mark.slow
@needs_openvino
def test_export_openvino_round_trip(tmp_path: Path, model: DABNet) -> None:
    import openvino as ov

    ckpt = tmp_path / "weights.pt"
    torch.save({"model": model.state_dict(), "num_classes": 11}, ckpt)
    out = tmp_path / "dabnet.xml"
    code, text = _run_cli(
        [
            "export",
            "--format",
            "openvino",
            "--out",
            str(out),
            "--checkpoint",
            str(ckpt),
            "--input-size",
            "64,96",
            "--threads",
            "2",
        ]
    )
    assert code == 0 and "OpenVINO matches PyTorch" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dabnet.bin", "dabnet.xml", "weights.pt"]  # no temp left
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for shape in ((1, 3, 64, 96), (2, 3, 72, 104)):  # the exported axes are dynamic
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 50
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(compiled([x.numpy()])[compiled.output(0)])
        assert relative_difference(expected, got) <= FP32_TOLERANCE


def test_export_openvino_needs_an_xml_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["export", "--format", "openvino", "--out", str(tmp_path / "m.onnx"), "--input-size", "32,32"])
    assert code == 2 and "must end in .xml" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_fps_val_miou_without_weights_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["fps", "48,64", "--variants", "eager", "--val-miou"])
    err = capsys.readouterr().err
    assert code != 0 and "--val-miou needs trained weights: add --checkpoint" in err and "Traceback" not in err


@pytest.mark.slow
def test_export_round_trip_through_onnxruntime(tmp_path: Path, model: DABNet) -> None:
    import onnxruntime as ort

    ckpt = tmp_path / "weights.pt"
    torch.save({"model": model.state_dict(), "num_classes": 11}, ckpt)
    out = tmp_path / "dabnet.onnx"
    code, text = _run_cli(
        ["export", "--format", "onnx", "--out", str(out), "--checkpoint", str(ckpt), "--input-size", "64,96"]
    )
    assert code == 0 and "wrote" in text and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dabnet.onnx", "weights.pt"]  # no temp file left
    assert os.stat(out).st_mode & 0o044  # readable by others like any normal file
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 64, 96), (2, 3, 72, 104)):  # the exported axes are dynamic
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 50
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        assert got.shape == expected.shape
        assert relative_difference(expected, got) <= FP32_TOLERANCE


def test_export_to_a_missing_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["export", "--out", str(tmp_path / "nope" / "m.onnx"), "--input-size", "32,32"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(("fmt", "target"), [("onnx", "torch.onnx.export"), ("openvino", "openvino.convert_model")])
def test_export_failure_with_an_empty_message_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fmt: str, target: str
) -> None:
    module, name = target.rsplit(".", 1)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("")  # an exporter that fails without saying why

    monkeypatch.setattr(importlib.import_module(module), name, fail)
    out = tmp_path / ("m.xml" if fmt == "openvino" else "m.onnx")
    code = cli.main(["export", "--format", fmt, "--out", str(out), "--input-size", "32,32"])
    err = capsys.readouterr().err
    assert code != 0 and "failed: RuntimeError: RuntimeError" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
