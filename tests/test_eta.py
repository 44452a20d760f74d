"""The ETA line: stage boundaries by iteration, remaining time per stage, and the engine printing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dabnet_lib.training.engine import fit
from dabnet_lib.training.eta import ETA_REPORT, eta_line, final_stage_start, remaining_seconds
from dabnet_lib.training.recipes import get_recipe


@pytest.mark.parametrize(
    ("total", "ipe", "frac", "start"),
    [
        (2900, 58, 0.12, 2552),
        (2900, 58, 0.0, 2900),
        (8, 4, 0.5, 4),
        (8, 4, 0.4, 8),
        (10, 4, 0.9, 4),
    ],
)
def test_final_stage_start_is_the_first_epoch_boundary_past_the_fraction(
    total: int, ipe: int, frac: float, start: int
) -> None:
    assert final_stage_start(total, ipe, frac) == start


def test_remaining_seconds_scales_the_unseen_stage_by_pixels() -> None:
    # 100 iterations left in stage 0 at 0.5 s, then 50 in stage 1 at 4x the pixels: 50 + 100 s
    assert remaining_seconds(400, 550, 500, 0.5, 0, 4.0) == pytest.approx(150.0)
    assert remaining_seconds(520, 550, 500, 2.0, 1, 4.0) == pytest.approx(60.0)  # measured in stage 1 itself
    assert remaining_seconds(550, 550, 500, 2.0, 1, 4.0) == 0.0


def test_eta_line_reads_well() -> None:
    line = eta_line(1410.0, 2480, 0.41, True)
    assert line.startswith("ETA: 23.5 min for 2,480 more iterations (0.41 s/iteration now")
    assert "pixel count" in line and "done about" in line


def test_training_prints_an_eta_even_when_quiet(
    camvid_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = get_recipe("camvid", "smoke").replace(
        max_images=8, batch_size=2, epochs=8, crop_size=(32, 48), val_every=0, save_every=0
    )
    fit(recipe, camvid_tiny, tmp_path / "run", quiet=True)
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.startswith("ETA: ")]
    assert len(lines) == 1 and f"for {32 - ETA_REPORT:,} more iterations" in lines[0]
