"""Tests that need a CUDA device (marked ``gpu``): deselected by `make test`, run by `make gpu-check`
(scripts/gpu_check.py sets DABNET_GPU_TESTS=1). Without a GPU they fail, they never pass or skip.

UNVERIFIED until a GPU run: this project has had no GPU; these tests were dry-run on CPU only (device
swapped to cpu, CUDA-only calls removed), which checks their logic, not CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dabnet_lib import cli
from dabnet_lib.data.datasets import build_dataset
from dabnet_lib.deploy.gpu_timing import DEVICE_VARIANTS, benchmark_on_device
from dabnet_lib.model.dabnet import DABNet
from dabnet_lib.training.losses import build_loss
from dabnet_lib.training.step import train_step
from dabnet_lib.training.validation import evaluate

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable batch: the class of a pixel is the sign pattern of its first two channels (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 64, 96, generator=g) * 50
    labels = (images[:, 0] > 0).long() * 2 + (images[:, 1] > 0).long()
    labels[:, :8] = 11  # some ignored pixels
    return images.to(CUDA), labels.to(CUDA)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16_scaler", "bf16"])
def test_cuda_amp_training_steps_learn_and_a_scaler_skip_is_reported(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = DABNet(11).to(CUDA, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    criterion = build_loss("ce", 11).to(CUDA)
    images, labels = _batch()
    losses = []
    for _ in range(15):
        loss, applied = train_step(
            model, images.contiguous(memory_format=torch.channels_last), labels, criterion, opt, scaler, dtype
        )
        assert bool(applied)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    before = [p.detach().clone() for p in model.parameters()]
    handle = model.init_conv[0].conv.weight.register_hook(lambda g: g * float("inf"))
    loss, applied = train_step(model, images, labels, criterion, opt, scaler, dtype)
    handle.remove()
    assert not bool(applied)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_ohem_on_cuda_keeps_the_same_pixels_as_on_cpu() -> None:
    g = torch.Generator().manual_seed(3)
    logits, target = torch.randn(2, 19, 32, 64, generator=g), torch.randint(0, 19, (2, 32, 64), generator=g)
    target[0, :4] = 255
    for min_kept in (0, 100, 4000, 10_000):  # below, around and above the scored pixel count
        loss = build_loss("ohem", 255, thresh=0.7, min_kept=min_kept)
        assert float(loss.to(CUDA)(logits.to(CUDA), target.to(CUDA))) == pytest.approx(
            float(loss(logits, target)), rel=1e-4
        )


def test_evaluate_on_cuda_leaves_the_model_where_it_was(camvid_root: Path) -> None:
    ds = build_dataset("camvid", camvid_root, "val")
    model = DABNet(11).train()  # NCHW, on the CPU, training mode
    result = evaluate(model, ds, device="cuda", progress=False, limit=2)
    assert result["device"].startswith("cuda") and result["images"] == 2
    assert model.training and all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())


def test_fps_harness_times_every_device_variant_on_cuda() -> None:
    rows = benchmark_on_device(DABNet(11).eval(), (128, 256), "all", device="cuda", warmup=2, iters=6, rounds=2)
    by = {r["variant"]: r for r in rows}
    for name in DEVICE_VARIANTS:
        assert by[name]["status"] == "ok" and by[name]["parity_ok"] is True and by[name]["ms"] > 0, by[name]
    assert all(r["status"] == "cpu only" for n, r in by.items() if n not in DEVICE_VARIANTS)
    assert torch.cuda.get_device_name(CUDA) in by["eager"]["device"]


def test_fps_cli_on_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["fps", "64,96", "--device", "cuda", "--variants", "folded,fp16,int8", "--iters", "4", "--json", "--quiet"]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["variant"] for r in rows] == ["eager", "folded", "fp16", "int8"]
    assert rows[-1]["status"] == "cpu only"


def test_smoke_training_on_cuda_with_deferred_host_syncs(
    camvid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine on CUDA (AMP auto, step flags read every 10 iterations): finite loss, nothing skipped."""
    from dabnet_lib.training.engine import fit
    from dabnet_lib.training.recipes import get_recipe

    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path / "cache"))
    recipe = get_recipe("camvid", "smoke").replace(epochs=6, save_every=0)  # 12 iterations
    summary = fit(recipe, camvid_root, tmp_path / "run", device="cuda", quiet=True)
    assert summary["device"].startswith("cuda") and summary["iterations"] == 12
    assert all(row["skipped_steps"] == 0 and row["loss"] > 0 for row in summary["metrics"])
