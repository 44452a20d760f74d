"""CLI: ``dabnet train`` / ``stats`` / ``bench-train``: help, bad flags, missing data, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dabnet_lib.cli import main
from dabnet_lib.data.datasets import CAMVID
from dabnet_lib.deploy.bench import bench_train, format_bench
from dabnet_lib.model.dabnet import build_from_checkpoint
from dabnet_lib.training.autotune import Candidate


@pytest.fixture(autouse=True)
def _stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stats_cache"))


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "train",
            [
                "--dataset",
                "--profile",
                "--train-type",
                "--max-epochs",
                "--batch-size",
                "--lr",
                "--resume",
                "--input-size",
                "--data-root",
                "--out",
                "--minutes",
                "--seed",
                "--device",
                "--num-workers",
                "--set",
                "--sync-bn",
                "--quiet",
            ],
        ),
        ("stats", ["--dataset", "--data-root", "--split"]),
        (
            "bench-train",
            ["--iters", "--rounds", "--batch-size", "--input-size", "--amp", "--compile", "--sweep", "--channels-last"],
        ),
    ],
)
def test_help(command: str, flags: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "-h"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in flags), [f for f in flags if f not in text]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "kitti"], "invalid choice: 'kitti'"),
        (["train", "--profile", "gpu"], "invalid choice: 'gpu'"),
        (["train", "--input-size", "big"], "expected H,W"),
        (["train", "--max-epochs", "ten"], "invalid int value"),
        (["train", "--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2_with_one_message(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "learning_rate=1"], "unknown field(s) learning_rate; valid fields:"),
        (["--set", "batch_size=0"], "recipe field 'batch_size': bad value 0"),
        (["--lr", "-1"], "recipe field 'lr'"),
        (["--set", "nonsense"], "field=value"),
    ],
)
def test_bad_recipe_values(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--profile", "smoke", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_missing_data_is_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert main(["train", "--profile", "smoke", "--data-root", str(missing), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "make data" in err and len(err.strip().splitlines()) == 1
    assert main(["stats", "--data-root", str(missing)]) == 2


@pytest.mark.slow
def test_train_smoke_then_resume_longer(camvid_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = [
        "train",
        "--profile",
        "smoke",
        "--data-root",
        str(camvid_tiny),
        "--out",
        str(tmp_path),
        "--quiet",
        "--input-size",
        "48,64",
        "--set",
        "save_every=0",
    ]
    assert main([*base, "--max-epochs", "1", "--lr", "2e-3", "--seed", "3"]) == 0
    recipe = json.loads((tmp_path / "recipe.json").read_text())["recipe"]
    assert (recipe["epochs"], recipe["lr"], recipe["seed"], recipe["crop_size"]) == (1, 2e-3, 3, [48, 64])
    model, ckpt = build_from_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == 1 and model.num_classes == CAMVID.num_classes
    assert main([*base, "--max-epochs", "2", "--lr", "2e-3", "--seed", "3", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # resuming with another seed would not continue the same run: refused, naming the field
    assert main([*base, "--max-epochs", "3", "--seed", "4", "--resume"]) == 2
    assert "seed" in capsys.readouterr().err


def test_stats_prints_mean_std_and_weights(camvid_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["stats", "--data-root", str(camvid_root), "--split", "val", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "camvid val: 101 images" in text and "mean (RGB, 0..255)" in text and "std" in text
    assert all(name in text for name in CAMVID.classes)
    assert main(["stats", "--data-root", str(camvid_root), "--split", "val", "--json", "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert len(stats["class_weights"]) == 11 and stats["num_images"] == 101


def _tiny_bench(root: Path, cands: list[Candidate], **kwargs: Any) -> dict[str, Any]:
    """bench_train on 48x64 crops, batch 2, one warm-up iteration, in-process loading."""
    return bench_train(root, cands, batch_size=2, input_size=(48, 64), warmup=1, official_workers=0, **kwargs)


@pytest.mark.slow
def test_bench_train_reports_the_official_loop_and_each_candidate(camvid_tiny: Path) -> None:
    cands = [Candidate("off", True, False), Candidate("bf16", False, False)]
    result = _tiny_bench(camvid_tiny, cands, iters=2, rounds=2, max_images=6, status={cands[0]: "the choice"})
    assert [e["label"] for e in result["engines"]] == ["fp32 channels_last eager", "bf16 NCHW eager"]
    for loop in [result["official"], *result["engines"]]:
        assert loop["images"] == 8 and loop["images_per_s"] > 0 and len(loop["round_images_per_s"]) == 2
    for e in result["engines"]:
        assert e["ratio"] == pytest.approx(e["images_per_s"] / result["official"]["images_per_s"])
    assert result["ratio"] == result["engines"][0]["ratio"]
    text = format_bench(result)
    assert "official-style loop" in text and "bf16 NCHW eager" in text and "[the choice]" in text
    assert f"{result['engines'][1]['ratio']:.2f}x the official loop" in text


@pytest.mark.slow
def test_bench_train_labels_a_refused_channels_last_candidate_by_the_layout_it_trained(
    camvid_tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dabnet_lib.training.step as step

    monkeypatch.setattr(step, "bf16_channels_last_grad_error", lambda device_type="cpu": 1.7)  # the defect
    cands = [Candidate("bf16", True, False), Candidate("off", True, False)]
    result = _tiny_bench(camvid_tiny, cands, iters=1, rounds=1, max_images=4)
    refused, fp32 = result["engines"]
    assert refused["label"] == "bf16 NCHW* eager" and refused["channels_last"] is False
    assert refused["requested_channels_last"] is True and "wrong bf16 channels_last gradients" in refused["layout_note"]
    assert fp32["label"] == "fp32 channels_last eager" and fp32["channels_last"] is True and fp32["layout_note"] is None
    text = format_bench(result)
    assert "asked for channels_last, trained NCHW" in text and "bf16 NCHW* eager" in text


def test_the_official_style_loader_names_an_unreadable_image(tmp_path: Path) -> None:
    from dabnet_lib.deploy.bench import OfficialStyleCamVid
    from dabnet_lib.errors import DatasetError

    broken = tmp_path / "0001.png"
    broken.write_bytes(b"not a png")
    ds = OfficialStyleCamVid([(broken, broken)], (8, 8), CAMVID.official_mean, CAMVID.ignore_index)
    with pytest.raises(DatasetError, match=r"cannot read .*0001\.png"):
        ds[0]
