"""What a researcher sees while training: the progress events of ``fit``, TensorBoard event files
written by ``dabnet train``, and the notebook's live view (bar + one figure updated in place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dabnet_lib.cli import main
from dabnet_lib.data.datasets import CAMVID
from dabnet_lib.training.engine import fit
from dabnet_lib.training.recipes import get_recipe
from dabnet_lib.training.training_events import TrainingEvents, close_callbacks
from dabnet_lib.workbook import tensorboard_log
from dabnet_lib.workbook.live_progress import LIVE_PLOT_CLASS, LiveProgress


@pytest.fixture(autouse=True)
def _stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stats_cache"))


class Recorder:
    """A callback that keeps every event (and a few validation examples)."""

    def __init__(self) -> None:
        self.iterations: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.examples: list[Any] = []
        self.closed = 0

    def on_iteration(self, info: dict[str, Any]) -> None:
        self.iterations.append(dict(info))

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def on_validation(self, row: dict[str, Any], examples: Any) -> None:
        self.examples.append(examples(2))

    def close(self) -> None:
        self.closed += 1


def test_fit_sends_iteration_epoch_and_validation_events(camvid_tiny: Path, tmp_path: Path) -> None:
    rec, legacy = Recorder(), []
    summary = fit(
        get_recipe("camvid", "smoke"), camvid_tiny, tmp_path, quiet=True, callbacks=[rec], on_iteration=legacy.append
    )
    assert legacy == [1, 2, 3, 4] and [i["iteration"] for i in rec.iterations] == legacy  # old hook unchanged
    first = rec.iterations[0]
    assert first["total_iters"] == 4 and first["iters_per_epoch"] == 2 and first["images"] == 4
    assert isinstance(first["loss"], torch.Tensor) and first["loss"].dim() == 0 and first["applied"]
    assert [i["epoch"] for i in rec.iterations] == [0, 0, 1, 1] and first["lr"] > 0
    assert rec.rows == summary["metrics"] and len(rec.rows) == 2
    assert len(rec.examples) == 2 and rec.closed == 1  # val_every=1: a validation per epoch
    for ex in rec.examples[-1]:
        assert ex.image.dtype == np.uint8 and ex.image.shape[:2] == ex.label.shape == ex.pred.shape
        assert ex.pred.min() >= 0 and ex.pred.max() < CAMVID.num_classes


def test_callbacks_are_closed_when_training_fails(tmp_path: Path) -> None:
    rec = Recorder()
    with pytest.raises(Exception, match="make data"):
        fit(get_recipe("camvid", "smoke"), tmp_path / "no_camvid", tmp_path / "run", quiet=True, callbacks=[rec])
    assert rec.closed == 1 and not rec.iterations


def test_events_reach_callbacks_on_rank_0_only_and_close_all() -> None:
    rec = Recorder()
    seen: list[int] = []
    TrainingEvents([rec], is_main=False, on_iteration=seen.append).iteration({"iteration": 7})  # type: ignore[typeddict-item]
    assert seen == [7] and not rec.iterations

    class Broken:
        def close(self) -> None:
            raise OSError("disk full")

    later = Recorder()
    with pytest.raises(OSError, match="disk full"):
        close_callbacks([Broken(), later])
    assert later.closed == 1


def test_dabnet_train_writes_tensorboard_events(camvid_tiny: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (
        main(
            [
                "train",
                "--profile",
                "smoke",
                "--data-root",
                str(camvid_tiny),
                "--out",
                str(tmp_path),
                "--quiet",
                "--set",
                "save_every=0",
            ]
        )
        == 0
    )
    assert list(tmp_path.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    expected = {
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "train/skipped_steps",
        "epoch/loss",
        "epoch/images_per_s",
        "epoch/skipped_steps",
        "val/miou",
        "val/pixel_accuracy",
    }
    expected |= {f"val/iou/{name}" for name in CAMVID.classes}
    assert expected <= set(tags["scalars"]), expected - set(tags["scalars"])
    assert {"val/example_0", "val/example_1", "val/example_2"} <= set(tags["images"])
    assert "recipe/text_summary" in tags["tensors"]
    assert [e.step for e in acc.Scalars("val/miou")] == [2, 4]  # a validation per epoch, step = iteration
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("val/miou"))
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4] and acc.Scalars("train/loss")[0].value > 0
    image = acc.Images("val/example_0")[-1]
    assert image.width == 720 and image.height == 180  # photo | ground truth | prediction, 360x480 shrunk
    assert b'"dataset": "camvid"' in acc.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0]


def test_no_tensorboard_flag_and_missing_package(
    camvid_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    base = [
        "train",
        "--profile",
        "smoke",
        "--data-root",
        str(camvid_tiny),
        "--quiet",
        "--max-epochs",
        "1",
        "--set",
        "save_every=0",
        "--set",
        "val_every=0",
    ]
    assert main([*base, "--out", str(tmp_path / "off"), "--no-tensorboard"]) == 0
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))
    monkeypatch.setattr(tensorboard_log, "tensorboard_available", lambda: False)
    monkeypatch.setattr(tensorboard_log, "_warned", False)
    for run in ("a", "b"):
        assert main([*base, "--out", str(tmp_path / run)]) == 0
    err = capsys.readouterr().err
    assert err.count("pip install tensorboard") == 1  # said once, and training still ran
    assert (tmp_path / "b" / "last.pt").is_file() and not list((tmp_path / "b").glob("events.out.tfevents.*"))


class FakeHandle:
    """Stands in for IPython's display: records shows and in-place updates."""

    def __init__(self) -> None:
        self.shown: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []

    def __call__(self, bundle: dict[str, Any], **kwargs: Any) -> FakeHandle:
        assert kwargs.get("display_id") is True
        self.shown.append(bundle)
        return self

    def update(self, bundle: dict[str, Any], **kwargs: Any) -> None:
        self.updates.append(bundle)


def test_live_view_updates_one_figure_in_place(camvid_tiny: Path, tmp_path: Path) -> None:
    display = FakeHandle()
    live = LiveProgress(live=True, plot_every=1, display=display)
    fit(get_recipe("camvid", "smoke"), camvid_tiny, tmp_path, quiet=True, callbacks=[live])
    assert len(display.shown) == 1 and len(display.updates) >= 3  # one output, updated in place
    last = display.updates[-1]
    assert (
        f'class="{LIVE_PLOT_CLASS}"' in last["text/html"] and f'data-updates="{live.plot_updates}"' in last["text/html"]
    )
    assert last["image/png"] != display.shown[0]["image/png"]
    assert any("val_miou" in p for p in live.points) and any("loss" in p for p in live.points)
    assert live.bar is None  # closed


@pytest.mark.slow
def test_quiet_view_prints_a_few_lines(camvid_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = get_recipe("camvid", "smoke").replace(epochs=10, val_every=5)
    fit(recipe, camvid_tiny, tmp_path, quiet=True, callbacks=[LiveProgress(live=False, lines=4)])
    lines = capsys.readouterr().out.strip().splitlines()
    progress = [line for line in lines if "iteration" in line and "loss" in line]
    assert 3 <= len(progress) <= 6 and progress[-1].startswith("100%") and "20/20" in progress[-1]
    assert sum(line.startswith("iteration") and "val mIoU" in line for line in lines) == 2
