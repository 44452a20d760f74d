"""Exact resume: interrupted (SIGINT/SIGTERM, mid-epoch or at an epoch boundary) and resumed runs end with
the same weights as a run straight through; a SIGINT to the CLI leaves a resumable checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dabnet_lib.cli import main
from dabnet_lib.training.engine import TrainingInterrupted, fit
from dabnet_lib.training.recipes import Recipe, get_recipe
from dabnet_lib.training.train_state import load_for_resume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stats_cache"))


def _recipe(**kw: object) -> Recipe:
    """8 images, batch 2: 4 iterations per epoch, 2 epochs; no validation (weights are what we compare)."""
    fields: dict[str, object] = {
        "max_images": 8,
        "batch_size": 2,
        "epochs": 2,
        "crop_size": (48, 64),
        "warmup_iters": 3,
        "val_every": 0,
        "save_every": 0,
    }
    return get_recipe("camvid", "smoke").replace(**{**fields, **kw})


def _signal_at(iteration: int, signum: int) -> Callable[[int], None]:
    def hook(it: int) -> None:
        if it == iteration:
            os.kill(os.getpid(), signum)

    return hook


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_a_straight_run(camvid_tiny: Path, tmp_path: Path) -> None:
    straight = fit(_recipe(), camvid_tiny, tmp_path / "straight", quiet=True)
    assert straight["iterations"] == 8

    run = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted) as first:  # SIGINT at the end of epoch 1
        fit(_recipe(), camvid_tiny, run, quiet=True, on_iteration=_signal_at(4, signal.SIGINT))
    assert first.value.exit_code == 130 and first.value.checkpoint == run / "last.pt"
    ck = load_for_resume(run / "last.pt")
    assert (ck["epoch"], ck["position"], ck["iteration"]) == (1, 0, 4)

    with pytest.raises(TrainingInterrupted) as second:  # SIGTERM in the middle of epoch 2
        fit(_recipe(), camvid_tiny, run, resume=True, quiet=True, on_iteration=_signal_at(6, signal.SIGTERM))
    assert second.value.exit_code == 143
    ck = load_for_resume(run / "last.pt")
    assert (ck["epoch"], ck["position"], ck["iteration"]) == (1, 2, 6)

    resumed = fit(_recipe(), camvid_tiny, run, resume=True, quiet=True)
    assert resumed["iterations"] == 8 and resumed["weights_digest"] == straight["weights_digest"]
    _assert_same_weights(tmp_path / "straight" / "last.pt", run / "last.pt")
    a, b = load_for_resume(tmp_path / "straight" / "last.pt"), load_for_resume(run / "last.pt")
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8
    assert [r["loss"] for r in a["metrics"]] == pytest.approx([r["loss"] for r in b["metrics"]], rel=1e-12)
    assert signal.getsignal(signal.SIGINT) is not None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
def test_resume_across_the_resolution_stage_boundary_is_exact(camvid_tiny: Path, tmp_path: Path) -> None:
    """An iteration-defined two-stage run (as the cpu profile): stage 1 starts at iteration 4, the first
    epoch boundary past 50%; stops just before, at and after the boundary resume to the same weights."""
    from dabnet_lib.training.eta import final_stage_start

    recipe = _recipe(epochs=3, final_fraction=0.5, base_scale=0.5, final_base_scale=1.0, final_crop_size=(64, 80))
    assert final_stage_start(12, 4, 0.5) == 8
    recipe = recipe.replace(epochs=2)
    assert final_stage_start(8, 4, 0.5) == 4
    straight = fit(recipe, camvid_tiny, tmp_path / "straight", quiet=True)
    crops = [tuple(r["crop"]) for r in straight["metrics"]]
    assert crops == [(48, 64), (64, 80)]
    run = tmp_path / "resumed"
    for stop in (3, 4, 5):
        with pytest.raises(TrainingInterrupted):
            fit(recipe, camvid_tiny, run, resume="auto", quiet=True, on_iteration=_signal_at(stop, signal.SIGTERM))
        assert load_for_resume(run / "last.pt")["iteration"] == stop
    resumed = fit(recipe, camvid_tiny, run, resume=True, quiet=True)
    assert resumed["weights_digest"] == straight["weights_digest"]
    assert [tuple(r["crop"]) for r in resumed["metrics"] if not r["partial"]] == crops


@pytest.mark.slow
def test_final_stage_lr_restart_is_applied_once_and_resumes_exactly(camvid_tiny: Path, tmp_path: Path) -> None:
    """``final_lr``: the lr jumps to it at the stage boundary (iteration 4 of 8) and decays by poly to 0; runs
    stopped at and after the boundary resume to the straight run's weights, without restarting again."""
    recipe = _recipe(final_fraction=0.5, final_crop_size=(64, 80), final_lr=3e-4, lr=1e-3, warmup_iters=0)
    lrs: list[float] = []
    straight = fit(recipe, camvid_tiny, tmp_path / "straight", quiet=True)
    plain = fit(recipe.replace(final_lr=None), camvid_tiny, tmp_path / "plain", quiet=True)
    assert straight["weights_digest"] != plain["weights_digest"]
    sched = load_for_resume(tmp_path / "straight" / "last.pt")["scheduler"]
    assert (sched["restart_iter"], sched["restart_factor"]) == (4, pytest.approx(0.3))
    for i in range(4, 9):
        sched["last_epoch"] = i
        lrs.append(_lr_at(sched, recipe.lr))
    assert lrs[0] == pytest.approx(3e-4) and lrs[2] == pytest.approx(3e-4 * 0.5**0.9) and lrs[4] == 0.0
    run = tmp_path / "resumed"
    for stop in (4, 6):
        with pytest.raises(TrainingInterrupted):
            fit(recipe, camvid_tiny, run, resume="auto", quiet=True, on_iteration=_signal_at(stop, signal.SIGTERM))
    resumed = fit(recipe, camvid_tiny, run, resume=True, quiet=True)
    assert resumed["weights_digest"] == straight["weights_digest"]
    assert load_for_resume(run / "last.pt")["scheduler"]["restart_iter"] == 4


def _lr_at(state: dict, base: float) -> float:
    """The lr a scheduler with ``state`` gives (its restart included)."""
    from dabnet_lib.training.schedule import WarmupPolyLR

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = WarmupPolyLR(opt, 1)
    sched.load_state_dict(state)
    return base * sched.factor()


@pytest.mark.slow
def test_worker_processes_do_not_change_the_result(camvid_tiny: Path, tmp_path: Path) -> None:
    """Augmentation is seeded per (seed, epoch, image): forked workers give the in-process result."""
    recipe = _recipe(epochs=1)
    in_process = fit(recipe, camvid_tiny, tmp_path / "w0", quiet=True)
    workers = fit(recipe.replace(num_workers=2), camvid_tiny, tmp_path / "w2", quiet=True)
    assert workers["weights_digest"] == in_process["weights_digest"]
    other_seed = fit(recipe.replace(seed=7), camvid_tiny, tmp_path / "s7", quiet=True)
    assert other_seed["weights_digest"] != in_process["weights_digest"]


@pytest.mark.slow
def test_sigint_to_the_cli_leaves_a_resumable_checkpoint(camvid_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--profile",
        "smoke",
        "--data-root",
        str(camvid_tiny),
        "--out",
        str(out),
        "--quiet",
        "--max-epochs",
        "1000",
        "--set",
        "val_every=0",
        "--set",
        "save_every=0",
    ]
    env = {**os.environ, "DABNET_CACHE_DIR": os.environ["DABNET_CACHE_DIR"], "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dabnet_lib.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "resume with --resume" in err and "Traceback" not in err
    ck = load_for_resume(out / "last.pt")
    assert ck["iteration"] >= 1 and ck["iteration"] == ck["epoch"] * 2 + ck["position"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # resume through the CLI with a budget just one epoch longer
    assert main([*args[:-6], "--resume", "--max-epochs", str(ck["epoch"] + 1), "--set", "val_every=0"]) == 0
    assert load_for_resume(out / "last.pt")["epoch"] == ck["epoch"] + 1
