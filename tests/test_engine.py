"""Engine: learning on real CamVid, the smoke profile end to end, budgets, LR schedule, checkpoint files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dabnet_lib.data.datasets import CAMVID, build_dataset
from dabnet_lib.data.transforms import TrainTransform
from dabnet_lib.errors import CheckpointError
from dabnet_lib.malloc_reuse import keep_freed_memory
from dabnet_lib.model.checkpoints import capture_rng, restore_rng, save_checkpoint
from dabnet_lib.model.dabnet import DABNet, build_from_checkpoint, read_checkpoint
from dabnet_lib.training.engine import fit
from dabnet_lib.training.losses import build_loss
from dabnet_lib.training.recipes import get_recipe
from dabnet_lib.training.schedule import WarmupPolyLR
from dabnet_lib.training.step import train_step
from dabnet_lib.training.train_state import (
    CHECKPOINT_KEYS,
    PUBLISH_KEYS,
    RESUME_KEYS,
    load_for_resume,
    publish_weights,
)

CONTRACT_KEYS = {
    "model",
    "num_classes",
    "model_config",
    "dataset",
    "mean",
    "std",
    "epoch",
    "iteration",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "recipe",
    "metrics",
}


@pytest.fixture(autouse=True)
def _stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stats_cache"))


@pytest.mark.usefixtures("one_thread")
def test_training_steps_lower_the_loss_on_real_camvid(camvid_root: Path) -> None:
    ds = build_dataset("camvid", camvid_root, "train")
    tf = TrainTransform(
        (96, 128),
        mean=CAMVID.official_mean,
        ignore_index=CAMVID.ignore_index,
        base_scale=0.5,
        rng=np.random.default_rng(0),
    )
    pairs = [tf(*ds.load(i)) for i in (0, 90, 180, 270)]
    images = torch.stack([p[0] for p in pairs]).contiguous(memory_format=torch.channels_last)
    labels = torch.stack([p[1] for p in pairs])
    torch.manual_seed(0)
    model = DABNet(CAMVID.num_classes).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    criterion = build_loss("ce", CAMVID.ignore_index)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [float(train_step(model, images, labels, criterion, opt, scaler)[0]) for _ in range(20)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


def test_warmup_then_poly_match_the_formulas() -> None:
    base, total, warm, ratio, power = 1e-3, 1000, 100, 1 / 3, 0.9
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = WarmupPolyLR(opt, total, warm, ratio, power)
    seen = {0: opt.param_groups[0]["lr"]}
    for i in range(1, total + 5):
        opt.step()
        sched.advance()
        seen[i] = opt.param_groups[0]["lr"]
    expected = {
        0: base / 3,
        50: base * (1 / 3 + (2 / 3) * 50 / 100),
        99: base * (1 / 3 + (2 / 3) * 99 / 100),
        100: base,
        550: base * (1 - 450 / 900) ** 0.9,
        999: base * (1 - 899 / 900) ** 0.9,
        1000: 0.0,
        1003: 0.0,
    }
    for i, lr in expected.items():
        assert seen[i] == pytest.approx(lr, rel=1e-12, abs=1e-15), i


def test_time_budget_poly_reaches_zero_when_time_is_up() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupPolyLR(opt, total_iters=10**6, warmup_iters=2, warmup_ratio=0.5, power=0.9, budget_s=100.0)

    def step(elapsed: float) -> float:
        opt.step()
        sched.advance(elapsed_s=elapsed)
        return opt.param_groups[0]["lr"]

    assert step(4.0) == pytest.approx(0.75)  # warm-up: 0.5 + 0.5 * 1/2
    assert step(10.0) == pytest.approx(1.0)  # warm-up ends here: t_W = 10 s
    assert step(55.0) == pytest.approx(0.5**0.9)  # half of the remaining 90 s
    state = sched.state_dict()
    step(100.0)
    assert opt.param_groups[0]["lr"] == 0.0
    again = WarmupPolyLR(opt, total_iters=5, budget_s=1.0)
    again.load_state_dict(state)
    assert (again.warmup_end_s, again.elapsed_s, again.budget_s, again.total_iters) == (10.0, 55.0, 100.0, 10**6)


def test_restart_jumps_to_its_factor_and_decays_to_zero_at_the_end() -> None:
    """The final stage's lr restart (recipe ``final_lr``): multiplier f_R * (1 - (i - R) / (T - R)) ** power."""
    base, total, power = 2e-3, 100, 0.9
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = WarmupPolyLR(opt, total, warmup_iters=10, warmup_ratio=1 / 3, power=power)
    for _ in range(80):
        opt.step()
        sched.advance()
    tail = base * (1 - 70 / 90) ** power
    assert opt.param_groups[0]["lr"] == pytest.approx(tail, rel=1e-12)
    sched.restart(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(base * 0.5, rel=1e-12) and sched.get_last_lr() == [base * 0.5]
    state = sched.state_dict()
    seen = {}
    for i in range(81, total + 2):
        opt.step()
        sched.advance()
        seen[i] = opt.param_groups[0]["lr"]
    assert seen[90] == pytest.approx(base * 0.5 * (1 - 10 / 20) ** power, rel=1e-12)
    assert seen[100] == seen[101] == 0.0
    again = WarmupPolyLR(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base), total)
    again.load_state_dict(state)
    assert (again.restart_iter, again.restart_factor) == (80, 0.5)


def test_restart_under_a_time_budget_reaches_zero_when_time_is_up() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupPolyLR(opt, total_iters=10**6, warmup_iters=0, power=1.0, budget_s=100.0)
    opt.step()
    sched.advance(elapsed_s=60.0)
    sched.restart(0.8)  # 40 s of the budget left
    opt.step()
    sched.advance(elapsed_s=80.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.8 * 0.5)
    opt.step()
    sched.advance(elapsed_s=100.0)
    assert opt.param_groups[0]["lr"] == 0.0


def test_smoke_profile_end_to_end(camvid_tiny: Path, tmp_path: Path) -> None:
    rows: list[dict] = []
    summary = fit(get_recipe("camvid", "smoke"), camvid_tiny, tmp_path, quiet=True, on_epoch=rows.append)
    for name in (
        "last.pt",
        "best.pt",
        "epoch_0001.pt",
        "epoch_0002.pt",
        "metrics.jsonl",
        "curves.png",
        "recipe.json",
        "summary.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines == json.loads(json.dumps(rows))
    for row in lines:
        assert {"epoch", "iteration", "loss", "lr", "val_miou", "images_per_s", "elapsed_s"} <= set(row)
        assert 0.0 <= row["val_miou"] <= 1.0 and row["images_per_s"] > 0 and np.isfinite(row["loss"])
    assert summary["stopped_by"] == "epochs" and summary["iterations"] == lines[-1]["iteration"] == 4
    assert summary["best"] == str(tmp_path / "best.pt") and summary["best_val_miou"] == max(
        r["val_miou"] for r in lines
    )
    model, ckpt = build_from_checkpoint(tmp_path / "best.pt")
    assert set(ckpt) >= CONTRACT_KEYS and ckpt["dataset"] == "camvid" and ckpt["num_classes"] == 11
    assert ckpt["mean"] == list(CAMVID.official_mean) and ckpt["std"] is None
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 11, 64, 96)
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    # TrainState is the one list of checkpoint keys: last.pt holds them all, a published copy its share
    assert tuple(read_checkpoint(tmp_path / "last.pt")) == CHECKPOINT_KEYS
    assert set(CONTRACT_KEYS) <= set(RESUME_KEYS) | set(PUBLISH_KEYS)
    published = publish_weights(tmp_path / "last.pt", tmp_path / "published.pt")
    assert tuple(read_checkpoint(published)) == PUBLISH_KEYS and not set(RESUME_KEYS) <= set(PUBLISH_KEYS)


def test_trainval_selects_nothing_on_val(camvid_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = get_recipe("camvid", "smoke").replace(train_split="trainval", epochs=1, save_every=0)
    summary = fit(recipe, camvid_tiny, tmp_path, quiet=True)
    assert "contains the 'val' images" in capsys.readouterr().out
    assert summary["val_seen"] and summary["best"] is None and summary["result"] == str(tmp_path / "last.pt")
    assert not (tmp_path / "best.pt").exists()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["val_seen"] is True and row["val_miou"] is not None


def test_minutes_budget_stops_validates_and_ends_at_zero_lr(camvid_tiny: Path, tmp_path: Path) -> None:
    # val_every beyond the budget: validation happens only where the time budget stops the run
    recipe = get_recipe("camvid", "smoke").replace(epochs=10**4, minutes=0.03, save_every=0, val_every=10**4)
    summary = fit(recipe, camvid_tiny, tmp_path, quiet=True)
    last = summary["metrics"][-1]
    assert summary["stopped_by"] == "minutes" and summary["elapsed_s"] >= 0.03 * 60
    assert last["lr"] == 0.0 and last["val_miou"] is not None
    assert read_checkpoint(tmp_path / "last.pt")["iteration"] == summary["iterations"]


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match=f"could not save checkpoint {path}.*No space left"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    kept = read_checkpoint(path)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    state = capture_rng()
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)
    restore_rng(read_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resume_from_corrupt_truncated_or_foreign_files(camvid_tiny: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint({"model": DABNet(11).state_dict(), "epoch": 3}, good)  # weights only: no training state
    with pytest.raises(CheckpointError, match=f"{good}.*cannot resume.*optimizer"):
        load_for_resume(good)
    truncated = tmp_path / "last.pt"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {truncated}.*truncated or corrupt"):
        fit(get_recipe("camvid", "smoke"), camvid_tiny, tmp_path, resume=True, quiet=True)
    with pytest.raises(CheckpointError, match="no such file"):
        fit(get_recipe("camvid", "smoke"), camvid_tiny, tmp_path / "empty", resume=True, quiet=True)


def test_cityscapes_smoke_trains_with_sgd_and_ohem(cityscapes_root: Path, tmp_path: Path) -> None:
    recipe = get_recipe("cityscapes", "smoke")
    assert (recipe.optimizer, recipe.loss) == ("sgd", "ohem")
    summary = fit(recipe, cityscapes_root, tmp_path, quiet=True)
    assert summary["iterations"] == 2 and summary["best"] is not None  # 3 images, batch 2: 1 iteration per epoch
    saved = json.loads((tmp_path / "recipe.json").read_text())
    assert saved["class_weights"] == pytest.approx(list(recipe.class_weights))
    assert saved["host_malloc"] == keep_freed_memory()  # a CPU run records how its host memory was reused
    model, ckpt = build_from_checkpoint(tmp_path / "best.pt")
    assert (
        model.num_classes == 19
        and ckpt["dataset"] == "cityscapes"
        and ckpt["mean"] == pytest.approx([73.16, 82.91, 72.39])
    )
    assert all(np.isfinite(r["loss"]) and 0 <= r["val_miou"] <= 1 for r in summary["metrics"])


def test_thread_tuner_keeps_the_faster_thread_count() -> None:
    from dabnet_lib.training.distributed import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner((1, 2), period=10, probe=3)
        used = []
        for _ in range(40):  # a busy machine: two threads take 1 s per iteration, one thread 0.3 s
            used.append(torch.get_num_threads())
            tuner.record(1.0 if used[-1] == 2 else 0.3)
        assert used[:6] == [2] * 6 and tuner.current == 1 and used.count(1) >= 25
        tuner = ThreadTuner((1, 2), period=10, probe=3)
        for _ in range(40):  # an idle machine: two threads are faster, one-thread probes are dropped
            tuner.record(0.5 if torch.get_num_threads() == 2 else 0.9)
        assert tuner.current == 2 and tuner.switches == 0
    finally:
        torch.set_num_threads(before)


def test_thread_tuner_skips_trials_while_its_threads_have_the_cores_to_themselves() -> None:
    from dabnet_lib.training.distributed import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner((1, 2), period=10, probe=3)
        used = []
        for _ in range(40):  # quiet: both threads run the whole iteration (CPU time = 2 x wall)
            used.append(torch.get_num_threads())
            tuner.record(0.5, 1.0)
        assert used == [2] * 40 and tuner.skipped_trials == 4 and tuner.switches == 0
        tuner = ThreadTuner((1, 2), period=10, probe=3)
        used = []
        for _ in range(40):  # busy: the two threads get one core between them; one thread alone is faster
            used.append(torch.get_num_threads())
            tuner.record(*((1.0, 1.0) if used[-1] == 2 else (0.3, 0.3)))
        assert tuner.current == 1 and used.count(1) >= 25 and tuner.skipped_trials == 0
    finally:
        torch.set_num_threads(before)


def test_publish_weights_is_small_and_loads(tmp_path: Path) -> None:
    model = DABNet(11)
    opt = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 3, 32, 32)).mean().backward()
    opt.step()
    full = tmp_path / "last.pt"
    save_checkpoint(
        {
            "model": model.state_dict(),
            "num_classes": 11,
            "dataset": "camvid",
            "mean": [1.0, 2.0, 3.0],
            "std": None,
            "optimizer": opt.state_dict(),
            "rng": capture_rng(),
            "epoch": 5,
        },
        full,
    )
    small = publish_weights(full, tmp_path / "small.pt")
    assert os.path.getsize(small) < 0.5 * os.path.getsize(full)
    rebuilt, ckpt = build_from_checkpoint(small)
    assert "optimizer" not in ckpt and ckpt["epoch"] == 5 and ckpt["mean"] == [1.0, 2.0, 3.0]
    assert all(
        torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_compile_failure_falls_back_to_eager(
    camvid_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    class NoCompiler(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: NoCompiler())
    recipe = get_recipe("camvid", "smoke").replace(compile=True, epochs=1, save_every=0)
    eager = fit(recipe.replace(compile=False), camvid_tiny, tmp_path / "eager", quiet=True)
    fallback = fit(recipe, camvid_tiny, tmp_path / "fallback", quiet=True)
    assert "torch.compile failed (RuntimeError: InductorError: no working C++ compiler" in capsys.readouterr().out
    assert fallback["weights_digest"] == eager["weights_digest"]


def test_fit_gives_the_caller_its_threads_and_random_streams_back(camvid_tiny: Path, tmp_path: Path) -> None:
    import random

    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(
            get_recipe("camvid", "smoke").replace(epochs=1, max_iters=1, val_every=0, save_every=0),
            camvid_tiny,
            tmp_path,
            quiet=True,
        )  # the smoke profile trains on 1 thread and seeds every generator with 1234
        assert torch.get_num_threads() == 2
        assert draws() == expected
    finally:
        torch.set_num_threads(before)


def test_resume_names_recipe_fields_changed_since_the_checkpoint(
    camvid_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A finished run resumed with another loss trains nothing: the log must say the weights are the old recipe's.
    recipe = get_recipe("camvid", "smoke").replace(epochs=1, val_every=0, save_every=0)
    fit(recipe, camvid_tiny, tmp_path, quiet=True)
    capsys.readouterr()
    fit(recipe, camvid_tiny, tmp_path, resume="auto", quiet=True)
    assert "differs from the checkpoint" not in capsys.readouterr().out
    fit(recipe.replace(lovasz_weight=1.0, epochs=2), camvid_tiny, tmp_path, resume="auto", quiet=True)
    out = capsys.readouterr().out
    assert (
        "the recipe differs from the checkpoint's in epochs 1 -> 2; lovasz_weight 0.0 -> 1.0: its 2 iterations" in out
    )
