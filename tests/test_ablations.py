"""The ablation sweep: recipe, units and their files, paired statistics, shards, Ray, and bad input."""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest

from dabnet_lib.cli import main
from dabnet_lib.errors import DabnetError
from dabnet_lib.training.schedule import lr_factor
from dabnet_lib.workbook import ablations as A
from dabnet_lib.workbook.ablation_stats import paired_table, seeds_to_resolve, t_interval, verdict
from dabnet_lib.workbook.ablation_sweep import Sweep, build_tables, missing_note, plan, run_sweep
from dabnet_lib.workbook.ablation_units import (
    Unit,
    parse_shard,
    plan_units,
    read_unit,
    read_units,
    shard_units,
    unit_path,
    write_unit,
)


def test_ablation_recipe_anneals_to_zero_on_held_out_val() -> None:
    r = A.ablation_recipe("camvid", "cpu", iters=600)
    assert (r.train_split, r.val_split) == ("train", "val")
    assert r.max_iters == 600 and r.epochs >= 600 and r.minutes is None and r.final_fraction == 0.0
    assert r.warmup_iters == 30  # 5% of the budget
    assert (r.amp, r.compile, r.threads) == ("off", False, None)  # same numbers on every CPU; fixed threads
    assert lr_factor(600, 600, r.warmup_iters, r.warmup_ratio, r.poly_power) == 0.0
    assert lr_factor(300, 600, r.warmup_iters, r.warmup_ratio, r.poly_power) > 0.4
    assert A.ablation_recipe("camvid", "cpu").max_iters == A.ABLATION_ITERS["cpu"]
    unit = A.unit_recipe("camvid", "cpu", Unit("no_dilation", 2, 300))
    assert unit.seed == 2 and unit.max_iters == 300 and unit.model_config == A.VARIANTS["no_dilation"][0].to_dict()


def test_unknown_variant_is_named() -> None:
    with pytest.raises(DabnetError, match=r"'nope'.*known: paper, local_only"):
        A.check_variants(["paper", "nope"])


def test_plan_pairs_seeds_and_shards_partition_it() -> None:
    units = plan_units(["paper", "local_only", "kernel_5"], [0, 1, 2], [300])
    assert len(units) == 9 and units[:3] == [
        Unit("paper", 0, 300),
        Unit("local_only", 0, 300),
        Unit("kernel_5", 0, 300),
    ]
    for n in (1, 2, 4):
        shards = [shard_units(units, i, n) for i in range(1, n + 1)]
        assert sorted(u for s in shards for u in s) == sorted(units)
        assert sum(len(s) for s in shards) == len(units)
    assert parse_shard("2/3") == (2, 3)
    for bad, msg in (
        ("3/2", "1 <= i <= n"),
        ("0/2", "1 <= i <= n"),
        ("1/0", "1 <= i <= n"),
        ("a/b", "expected i/n"),
        ("2", "expected i/n"),
    ):
        with pytest.raises(DabnetError, match=msg):
            parse_shard(bad)


def test_t_interval_and_verdicts() -> None:
    mean, sd, low, high = t_interval([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2)
    assert low == pytest.approx(2.0 - half) and high == pytest.approx(2.0 + half)
    assert verdict(low, high) == "not resolved"
    assert verdict(*t_interval([-3.0, -2.5, -3.5])[2:]) == "worse"
    assert verdict(*t_interval([1.0, 1.2, 0.9, 1.1])[2:]) == "better"
    assert math.isnan(t_interval([1.0])[2])
    # n=6: t(5)/sqrt(6) = 1.049 > 1; n=7: t(6)/sqrt(7) = 0.925 < 1
    assert seeds_to_resolve(1.0, 1.0) == 7 and seeds_to_resolve(0.0, 1.0) is None
    assert seeds_to_resolve(0.01, 5.0) is None  # more than MAX_SEEDS


def test_paired_table_pairs_on_common_seeds() -> None:
    runs = pd.DataFrame(
        {
            "variant": ["paper"] * 3 + ["worse_one"] * 3 + ["noisy"] * 2,
            "seed": [0, 1, 2, 0, 1, 2, 0, 2],
            "val_miou": [50.0, 54.0, 52.0, 47.0, 51.2, 48.8, 51.0, 51.0],
        }
    )
    t = paired_table(runs, "paper").set_index("variant")
    assert t.loc["paper", "verdict"] == "reference" and t.loc["paper", "val_miou"] == 52.0
    # paired deltas -3.0, -2.8, -3.2 resolve although the seeds themselves spread by 4 points
    assert t.loc["worse_one", "delta"] == pytest.approx(-3.0) and t.loc["worse_one", "verdict"] == "worse"
    assert t.loc["noisy", "n_paired"] == 2 and t.loc["noisy", "delta"] == pytest.approx(0.0)  # seeds 0 and 2
    assert t.loc["noisy", "verdict"] == "not resolved"


def _record(unit: Unit, miou: float, **changes: object) -> dict:
    sweep = Sweep("camvid", "smoke", Path(), Path(), Path())
    from dabnet_lib.workbook.ablation_units import recipe_fingerprint, training_code_digest

    r = sweep.recipe(unit)
    rec = {
        "variant": unit.variant,
        "seed": unit.seed,
        "iters": unit.iters,
        "val_miou": miou,
        "train_minutes": 0.1,
        "hardware": "test",
        "commit": "abc1234",
        "model_config": r.model_config,
        "recipe": r.to_dict(),
        "recipe_fingerprint": recipe_fingerprint(r.to_dict()),
        "code": training_code_digest(),
    }
    rec.update(changes)
    return rec


def test_unit_files_round_trip_and_bad_files_are_named(tmp_path: Path) -> None:
    unit = Unit("paper", 1, 4)
    path = write_unit(tmp_path, _record(unit, 42.5))
    assert path == unit_path(tmp_path, unit) and read_unit(path)["val_miou"] == 42.5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    bad = tmp_path / "paper__seed2__it4.json"
    bad.write_text('{"format": 1, "variant": "pa')
    with pytest.raises(DabnetError, match=r"paper__seed2__it4.json: not a readable unit file.*delete"):
        read_units(tmp_path)
    bad.write_text(json.dumps({"format": 99}))
    with pytest.raises(DabnetError, match="format 1"):
        read_unit(bad)
    bad.write_text(json.dumps({"format": 1, **_record(Unit("paper", 3, 4), 1.0)}))
    with pytest.raises(DabnetError, match="holds unit paper__seed3__it4"):
        read_unit(bad)


def test_foreign_units_are_kept_but_flagged(tmp_path: Path) -> None:
    sweep = Sweep("camvid", "smoke", Path(), tmp_path, tmp_path / "runs")
    units = plan_units(["paper", "local_only"], [0, 1], [4])
    for u, miou in zip(units, (40.0, 38.0, 42.0, 39.0), strict=True):
        write_unit(tmp_path, _record(u, miou))
    write_unit(tmp_path, _record(Unit("local_only", 2, 4), 10.0, model_config={"branches": "dilated"}))
    other = {**sweep.recipe(Unit("paper", 2, 4)).to_dict(), "lr": 0.5}
    write_unit(tmp_path, _record(Unit("paper", 2, 4), 10.0, recipe=other))
    write_unit(tmp_path, _record(Unit("kernel_5", 0, 4), 10.0, code="ffffffffffff", commit="0123abc"))
    tables = build_tables(sweep, [*units, Unit("kernel_5", 0, 4)], 4)
    assert tables.flagged == {
        "local_only__seed2__it4": ["other model config"],
        "paper__seed2__it4": ["other recipe"],
        "kernel_5__seed0__it4": ["other training code (commit 0123abc)"],
    }
    t = tables.table.set_index("variant")
    assert list(t.index) == ["paper", "local_only"] and t.loc["local_only", "n_paired"] == 2  # flagged left out
    assert t.loc["local_only", "delta"] == pytest.approx(-2.5)
    assert len(tables.runs) == 7 and tables.runs["flags"].ne("").sum() == 3
    assert tables.missing == [Unit("kernel_5", 0, 4)]
    assert "kernel_5: seed 0 @ 4 it" in missing_note(tables.missing, "dabnet ablations")


def test_the_current_training_code_is_declared_in_a_group() -> None:
    from dabnet_lib.workbook.ablation_units import EQUIVALENT_TRAINING_CODE, training_code_digest

    digest = training_code_digest()
    assert any(digest in group for group in EQUIVALENT_TRAINING_CODE), (
        f"training code digest {digest} is new: if this change keeps training numerics (refactor, docstring, message), "
        "add it to the group of the previous digest in ablation_units.EQUIVALENT_TRAINING_CODE; if it changes them, "
        "add a new group (the committed ablation units then show as 'other training code' until re-trained)"
    )


def test_equivalent_code_and_recipe_fields_added_later_keep_units_comparable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dabnet_lib.workbook.ablation_units as U

    sweep = Sweep("camvid", "smoke", Path(), tmp_path, tmp_path / "runs")
    unit = Unit("paper", 0, 4)
    config = A.VARIANTS["paper"][0].to_dict()
    rec = _record(unit, 40.0, code="aaaaaaaaaaaa")
    monkeypatch.setattr(U, "EQUIVALENT_TRAINING_CODE", (frozenset({"aaaaaaaaaaaa", "bbbbbbbbbbbb"}),))
    assert U.unit_flags(rec, config, sweep.fingerprint(), "bbbbbbbbbbbb") == []
    assert U.unit_flags(rec, config, sweep.fingerprint(), "cccccccccccc") == ["other training code (commit abc1234)"]
    older = {k: v for k, v in rec["recipe"].items() if k != "sync_bn"}  # a record from before a field existed
    assert U.unit_flags({**rec, "recipe": older}, config, sweep.fingerprint(), "bbbbbbbbbbbb") == []
    changed = {**rec["recipe"], "sync_bn": True}  # the same field away from its default is a different recipe
    assert U.unit_flags({**rec, "recipe": changed}, config, sweep.fingerprint(), "bbbbbbbbbbbb") == ["other recipe"]


@pytest.fixture
def smoke_sweep(tmp_path: Path, camvid_tiny: Path) -> Sweep:
    return Sweep("camvid", "smoke", camvid_tiny, tmp_path / "units", tmp_path / "runs")


@pytest.mark.slow
def test_sweep_trains_each_unit_once_and_records_it(smoke_sweep: Sweep) -> None:
    units, budget = plan(smoke_sweep, ["paper", "local_only"], [0, 1], budget=2)
    assert budget == 2 and len(units) == 4
    seen: dict[str, int] = {}

    class Counter:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_iteration(self, info: dict) -> None:
            seen[self.name] = seen.get(self.name, 0) + 1

    trained = run_sweep(smoke_sweep, units[:3], log=lambda _m: None, callbacks=lambda u: [Counter(u.name)])
    assert trained == units[:3] and seen == {u.name: 2 for u in units[:3]}  # each unit's own callbacks
    rec = read_unit(unit_path(smoke_sweep.units_dir, units[0]))
    assert rec["iterations"] == 2 and 0 <= rec["val_miou"] <= 100 and len(rec["iou"]) == 11
    assert rec["commit"] and rec["code"] and "Sky" in rec["iou"] and rec["hardware"]
    stamp = unit_path(smoke_sweep.units_dir, units[0]).stat().st_mtime_ns
    assert run_sweep(smoke_sweep, units, log=lambda _m: None) == [units[3]]  # continues; finished units stay
    assert unit_path(smoke_sweep.units_dir, units[0]).stat().st_mtime_ns == stamp
    tables = build_tables(smoke_sweep, units, 2)
    assert tables.seeds == (0, 1) and not tables.missing and list(tables.table["seeds"]) == [2, 2]


def _cli(tmp_path: Path, camvid_tiny: Path, name: str, *extra: str) -> int:
    return main(
        [
            "ablations",
            "--profile",
            "smoke",
            "--data-root",
            str(camvid_tiny),
            "--variants",
            "paper,local_only",
            "--seeds",
            "0,1",
            "--iters",
            "2",
            "--units-dir",
            str(tmp_path / name / "units"),
            "--quiet",
            "--runs-dir",
            str(tmp_path / name / "runs"),
            "--reports-dir",
            str(tmp_path / name),
            *extra,
        ]
    )


@pytest.mark.slow
def test_two_shards_make_the_table_of_one_run(tmp_path: Path, camvid_tiny: Path) -> None:
    assert _cli(tmp_path, camvid_tiny, "sharded", "--shard", "1/2") == 0
    first = sorted(p.name for p in (tmp_path / "sharded" / "units").glob("*.json"))
    assert len(first) == 2
    assert _cli(tmp_path, camvid_tiny, "sharded", "--shard", "2/2") == 0
    assert _cli(tmp_path, camvid_tiny, "whole") == 0
    sharded = pd.read_csv(tmp_path / "sharded" / "ablations.csv")
    whole = pd.read_csv(tmp_path / "whole" / "ablations.csv")
    cols = ["variant", "seeds", "val_miou", "delta", "ci_low", "ci_high", "verdict"]
    pd.testing.assert_frame_equal(sharded[cols], whole[cols])
    assert (tmp_path / "whole" / "figures" / "ablations.png").stat().st_size > 1000
    md = (tmp_path / "whole" / "ablations.md").read_text()
    assert "paired over seeds 0, 1" in md and "95% interval" in md


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/2"], "--shard 3/2: shard i of n needs 1 <= i <= n"),
        (["--variants", "paper,no_such"], "unknown ablation variant(s) 'no_such'"),
        (["--threads", "0"], "--threads 0"),
    ],
)
def test_bad_arguments_give_one_line_and_write_nothing(
    tmp_path: Path, camvid_tiny: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    assert (
        main(
            [
                "ablations",
                "--profile",
                "smoke",
                "--data-root",
                str(camvid_tiny),
                "--units-dir",
                str(tmp_path / "u"),
                "--runs-dir",
                str(tmp_path / "r"),
                "--reports-dir",
                str(tmp_path / "rep"),
                *args,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())


def test_corrupt_unit_file_stops_the_sweep_with_its_name(
    tmp_path: Path, camvid_tiny: Path, capsys: pytest.CaptureFixture
) -> None:
    units = tmp_path / "bad" / "units"
    units.mkdir(parents=True)
    (units / "paper__seed0__it2.json").write_text("not json")
    assert _cli(tmp_path, camvid_tiny, "bad") == 2
    err = capsys.readouterr().err
    assert "paper__seed0__it2.json: not a readable unit file" in err and "delete" in err
    assert not (tmp_path / "bad" / "runs").exists() and not (tmp_path / "bad" / "ablations.md").exists()


def test_ray_missing_is_one_clear_error(
    tmp_path: Path, camvid_tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    assert _cli(tmp_path, camvid_tiny, "noray", "--backend", "ray") == 2
    err = capsys.readouterr().err
    assert "needs Ray, which is not installed" in err and "dabnet-workbook[ray]" in err
    assert not (tmp_path / "noray" / "runs").exists()


@pytest.mark.slow
def test_ray_backend_runs_units_on_a_local_instance(smoke_sweep: Sweep) -> None:
    units, _ = plan(smoke_sweep, ["paper"], [0, 1], budget=2)
    smoke_sweep = Sweep(
        smoke_sweep.dataset,
        smoke_sweep.profile,
        smoke_sweep.data_root,
        smoke_sweep.units_dir,
        smoke_sweep.runs_dir,
        {"threads": 1},
    )
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    trained = run_sweep(smoke_sweep, units, backend="ray", log=lambda _m: None)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # Ray's are gone
    assert sorted(trained) == sorted(units)
    records = read_units(smoke_sweep.units_dir)
    assert [(r["variant"], r["seed"]) for r in records] == [("paper", 0), ("paper", 1)]
    assert all(r["iterations"] == 2 for r in records)


def test_the_table_names_the_compared_seeds_when_the_reference_has_noise_study_seeds(tmp_path: Path) -> None:
    sweep = Sweep("camvid", "smoke", Path("."), tmp_path, tmp_path / "runs")
    table_units = plan_units(["paper", "local_only"], [0, 1], [4])
    noise_units = plan_units(["paper"], [0, 1, 2, 3], [4])  # the noise study at the table budget
    for u in sorted(set(table_units + noise_units)):
        write_unit(tmp_path, _record(u, 40.0 + u.seed - (1.0 if u.variant == "local_only" else 0.0)))
    tables = build_tables(sweep, noise_units + table_units, 4)
    assert tables.seeds == (0, 1)
    t = tables.table.set_index("variant")
    assert t.loc["paper", "seeds"] == 4 and t.loc["local_only", "n_paired"] == 2


def test_committed_units_match_todays_ablation_recipe_and_training_code() -> None:
    """The profile may move on (issue #11); the committed unit files stay comparable (UNIT_RECIPE_PINS)."""
    from dabnet_lib.workbook.ablation_units import read_units, training_code_digest, unit_flags

    units_dir = Path(__file__).resolve().parents[1] / "reports" / "ablations"
    sweep = Sweep("camvid", "cpu", Path("unused"), units_dir, Path("unused"))
    records = read_units(units_dir)
    assert len(records) >= 30
    code = training_code_digest()
    for rec in records:
        expected = A.VARIANTS[rec["variant"]][0].to_dict()
        assert unit_flags(rec, expected, sweep.fingerprint(), code) == [], rec["variant"]
    pinned = A.ablation_recipe("camvid", "cpu")
    assert all(getattr(pinned, k) == v for k, v in A.UNIT_RECIPE_PINS[("camvid", "cpu")].items())
