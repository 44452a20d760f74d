"""``dabnet bench-ops``: what it times, what it prints, and how it refuses bad settings."""

from __future__ import annotations

import json

import pytest
import torch

from dabnet_lib import cli
from dabnet_lib.deploy.bench_ops import TRAIN_STEP_TARGET, bench_fast_ops, format_bench_ops
from dabnet_lib.model.dabnet import DABNet
from dabnet_lib.model.fast_ops import count_fast_ops, use_fast_ops

TINY = {"input_size": (32, 48), "batch": 2, "threads": 1, "rounds": 2, "iters": 2, "warmup": 1}


def test_a_tiny_bench_times_both_models_interleaved_and_restores_threads() -> None:
    before = torch.get_num_threads()
    result = bench_fast_ops(**TINY)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before
    assert [len(result["times_ms"][name]) for name in ("stock", "fast")] == [4, 4]
    assert result["stock_ms"] > 0 and result["fast_ms"] > 0
    assert result["ratio"] == pytest.approx(result["stock_ms"] / result["fast_ms"])
    assert result["fast_ops"] == count_fast_ops(use_fast_ops(DABNet(11), bn_prelu=True))
    assert result["fast_ops"]["bn_prelu"] == 71  # by default the fast model fuses BN+PReLU, as the cpu profile
    assert bench_fast_ops(**TINY, bn_prelu=False)["fast_ops"]["bn_prelu"] == 0  # type: ignore[arg-type]
    assert result["fast_ops"]["custom_backward"] > 0  # the dilated convolutions did get the written-out backward
    assert result["target"] == TRAIN_STEP_TARGET and result["input_size"] == (32, 48)


def _result(ratio: float) -> dict:
    return {
        "input_size": (180, 240),
        "batch": 8,
        "threads": 2,
        "amp": "off",
        "channels_last": False,
        "torch": "2.13.0+cpu",
        "cpu": "some CPU",
        "fast_ops": {"fast": 18, "custom_backward": 14, "prelu": 20, "bn_prelu": 20},
        "stock_ms": 100.0 * ratio,
        "fast_ms": 100.0,
        "ratio": ratio,
        "target": TRAIN_STEP_TARGET,
    }


def test_the_verdict_line_says_met_or_how_far_short() -> None:
    assert format_bench_ops(_result(1.4)).splitlines()[-1].endswith("target >= 1.3x: met)")
    short = format_bench_ops(_result(1.17)).splitlines()[-1]
    assert "1.17x the stock ops" in short and "NOT met, 10% short" in short


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "batch must be >= 1, got 0"),
        (["--rounds", "0", "--iters", "0"], "rounds must be >= 1, got 0; iters must be >= 1, got 0"),
        (["--warmup", "-1"], "warmup must be >= 0, got -1"),
    ],
)
def test_bad_settings_are_one_clear_error(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["bench-ops", "--input-size", "32,48", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_json_output_is_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench-ops", "--input-size", "32,48", "--batch", "2", "--threads", "1", "--rounds", "1", "--iters", "1"]
    assert cli.main([*argv, "--warmup", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["batch"] == 2 and len(result["times_ms"]["fast"]) == 1
