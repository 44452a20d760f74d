"""`dabnet fps --device cuda` and the device timing harness (dabnet_lib.deploy.gpu_timing).

No GPU here: the harness runs its device code path on the CPU (perf_counter instead of CUDA events), the
CLI's CUDA refusal is checked for real (the suite hides GPUs), and the CUDA capability queries are mocked.
The CUDA timing itself is a `gpu`-marked test in tests/test_gpu.py (run by `make gpu-check`)."""

from __future__ import annotations

import pytest
import torch

import dabnet_lib.deploy.gpu_timing as gpu_timing
import dabnet_lib.deploy.profiling as profiling
from dabnet_lib import cli, devices
from dabnet_lib.deploy.gpu_timing import DEVICE_VARIANTS, HALF_TOLERANCE, benchmark_on_device, device_variant_names
from dabnet_lib.deploy.inference_variants import FP32_TOLERANCE, VARIANTS
from dabnet_lib.errors import DabnetError
from dabnet_lib.model.dabnet import DABNet


def test_fps_on_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert not torch.cuda.is_available()
    code = cli.main(["fps", "64,96", "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "dabnet fps --device cuda: no CUDA device" in err and "--device cpu" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("one_thread")
def test_device_harness_rows_parity_and_cpu_only_rows() -> None:
    torch.manual_seed(0)
    model = DABNet(11).eval()
    rows = benchmark_on_device(
        model,
        (64, 96),
        "folded,channels_last,fp16,bf16,onnxruntime,int8,warp9",
        device="cpu",
        warmup=1,
        iters=2,
        rounds=1,
    )
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["eager", "folded", "channels_last", "fp16", "bf16", "onnxruntime", "int8", "warp9"]
    for name in ("eager", "folded", "channels_last", "fp16", "bf16"):
        r = by[name]
        assert r["status"] == "ok" and r["ms"] > 0 and r["parity_ok"] is True, r
        assert r["parity_value"] <= HALF_TOLERANCE.get(name, FP32_TOLERANCE)
        assert r["fps"] == pytest.approx(1000 / r["ms"], rel=0.01)
    assert by["eager"]["speedup"] == 1.0 and "labels" in by["bf16"]["parity"]
    for name in ("onnxruntime", "int8"):
        assert by[name]["status"] == "cpu only" and by[name]["ms"] is None and "CPU only" in by[name]["error"]
    assert by["warp9"]["status"] == "error" and "unknown variant 'warp9'" in by["warp9"]["error"]
    assert "CPU only (a CPU backend)" in profiling.format_table(rows)
    assert next(model.parameters()).device.type == "cpu"  # the harness timed a copy


@pytest.mark.slow
def test_a_broken_variant_fails_its_parity_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = gpu_timing._build

    def broken(model, name, device):
        fn, notes = real(model, name, device)
        return (lambda x: fn(x) * 1.01) if name == "folded" else fn, notes

    monkeypatch.setattr(gpu_timing, "_build", broken)
    rows = benchmark_on_device(DABNet(11).eval(), (32, 48), "folded", device="cpu", warmup=0, iters=1, rounds=1)
    assert rows[1]["variant"] == "folded" and rows[1]["parity_ok"] is False and rows[1]["parity"].startswith("FAIL")


def test_all_on_a_device_lists_device_variants_then_the_cpu_only_ones() -> None:
    names = device_variant_names("all")
    assert names[: len(DEVICE_VARIANTS)] == list(DEVICE_VARIANTS)
    assert set(names) == set(DEVICE_VARIANTS) | set(VARIANTS)
    assert device_variant_names("bf16")[0] == "eager"


def test_profiling_benchmark_sends_cuda_to_the_device_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(gpu_timing, "benchmark_on_device", lambda *a, **k: seen.update(k) or [{"variant": "eager"}])
    assert profiling.benchmark(DABNet(11), (32, 48), "eager", device="cuda", iters=4) == [{"variant": "eager"}]
    assert seen["device"] == "cuda" and seen["iters"] == 4


@pytest.mark.parametrize(
    ("capability", "native"), [((6, 1), False), ((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)]
)
def test_native_bf16_needs_compute_capability_8(monkeypatch: pytest.MonkeyPatch, capability, native) -> None:
    """1080Ti (6.1), V100 (7.0), T4 (7.5) emulate bf16 (torch.cuda.is_bf16_supported() still says True)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert devices.cuda_bf16_native(0) is native


def test_require_cuda_names_the_command() -> None:
    with pytest.raises(DabnetError, match=r"^gpu thing: no CUDA device \(torch 2\.13"):
        devices.require_cuda("gpu thing")


def test_provenance_names_the_device_that_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    from dabnet_lib.machine import cpu_name
    from dabnet_lib.workbook.reports import provenance

    assert cpu_name() in provenance("cpu", "1 min", "cmd", device="cpu")["hardware"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    hardware = provenance("paper", "300 iterations", "cmd", device="cuda")["hardware"]
    assert hardware.startswith("NVIDIA H100 80GB HBM3 (CUDA ") and cpu_name() not in hardware


@pytest.mark.usefixtures("one_thread")
def test_cpu_and_device_harness_rows_have_the_same_columns_and_device_label() -> None:
    from dabnet_lib.machine import device_label

    model = DABNet(11).eval()
    cpu = profiling.benchmark(model, (32, 48), "eager", warmup=0, iters=1, rounds=1)
    dev = benchmark_on_device(model, (32, 48), "eager", device="cpu", warmup=0, iters=1, rounds=1)
    assert list(cpu[0]) == list(dev[0])
    assert cpu[0]["device"] == dev[0]["device"] == device_label("cpu") and "logical CPUs" in cpu[0]["device"]
    assert cpu[0]["speedup"] == dev[0]["speedup"] == 1.0 and cpu[0]["idle_before_rounds"] == []
