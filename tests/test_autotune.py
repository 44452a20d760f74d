"""The training autotuner: candidates, selection, compile gating, the per-machine cache, and the
engine's use of it (injected timings; one real timing run at a tiny size)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from dabnet_lib.machine import has_bf16_units
from dabnet_lib.model.dabnet import DABNetConfig
from dabnet_lib.training import autotune
from dabnet_lib.training.autotune import Candidate, StepTimer, TrainingChoice, candidate_space, choose, measure, pick
from dabnet_lib.training.recipes import get_recipe

CPU = torch.device("cpu")
GOOD_PROBE, BAD_PROBE = (lambda: 0.004), (lambda: 1.7)


class FakeTimer:
    """Stands in for :class:`StepTimer`: fixed images/s per candidate label; records what was built."""

    def __init__(self, speeds: dict[str, float], fail: tuple[str, ...] = (), share: float = 0.97) -> None:
        self.speeds, self.fail, self.built, self.share = speeds, fail, [], share  # type: list[str]

    def add(self, c: Candidate) -> float:
        if c.label in self.fail:
            raise RuntimeError("inductor: no C++ compiler\nmore detail")
        self.built.append(c.label)
        return 42.0 if c.compile else 1.0

    def time_round(self) -> None:
        pass

    def images_per_s(self, c: Candidate) -> float:
        return self.speeds[c.label]

    def cpu_share(self) -> float | None:
        return self.share


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "autotune.json"


def _choose(
    timer: FakeTimer,
    amp: str = "auto",
    cl: bool | str = "auto",
    comp: bool | str = "auto",
    units: bool = True,
    probe=GOOD_PROBE,
    crop=(180, 240),
    **kw,
) -> TrainingChoice:
    return choose(
        amp, cl, comp, CPU, 11, DABNetConfig(), crop, 8, 2, timer=timer, bf16_units=units, grad_error=probe, **kw
    )


ALL = {
    "fp32 NCHW eager": 8.0,
    "fp32 channels_last eager": 8.3,
    "bf16 NCHW eager": 9.0,
    "bf16 channels_last eager": 12.0,
    "fp32 NCHW compiled": 7.0,
    "fp32 channels_last compiled": 8.1,
    "bf16 NCHW compiled": 20.0,
    "bf16 channels_last compiled": 25.0,
}


def test_fastest_correct_candidate_wins() -> None:
    choice = _choose(FakeTimer(ALL))
    assert choice.candidate.label == "bf16 channels_last compiled" and choice.source == "measured"
    assert {r["label"] for r in choice.rows} == set(ALL)


def test_bf16_channels_last_refused_when_its_gradients_are_wrong() -> None:
    timer = FakeTimer(ALL)
    choice = _choose(timer, probe=BAD_PROBE)
    assert choice.candidate.label == "bf16 NCHW compiled"
    refused = {r["label"]: r for r in choice.rows if r["status"] == "refused"}
    assert set(refused) == {"bf16 channels_last eager", "bf16 channels_last compiled"}
    assert "wrong bf16 channels_last gradients" in refused["bf16 channels_last eager"]["reason"]
    assert not any("bf16 channels_last" in label for label in timer.built)


def test_no_bf16_units_means_no_bf16_and_no_timing_of_it() -> None:
    timer = FakeTimer(ALL)
    choice = _choose(timer, units=False)
    assert choice.amp == "off" and choice.candidate.label == "fp32 channels_last eager"
    assert not any(label.startswith("bf16") for label in timer.built)
    assert all(r["status"] == "refused" for r in choice.rows if r["label"].startswith("bf16"))


def test_bf16_refused_when_slower() -> None:
    slow_bf16 = {k: (v / 7 if k.startswith("bf16") else v) for k, v in ALL.items()}
    assert _choose(FakeTimer(slow_bf16)).amp == "off"


def test_a_simpler_candidate_within_the_margin_wins() -> None:
    speeds = {"fp32 NCHW eager": 10.0, "bf16 NCHW eager": 10.2}
    choice = _choose(FakeTimer(speeds), cl=False, comp=False)
    assert choice.candidate.label == "fp32 NCHW eager"
    speeds["bf16 NCHW eager"] = 11.0
    assert _choose(FakeTimer(speeds), cl=False, comp=False, use_cache=False).amp == "bf16"


def test_explicit_settings_win_and_nothing_is_timed() -> None:
    timer = FakeTimer({})
    choice = _choose(timer, amp="off", cl=True, comp=False)
    assert (choice.amp, choice.channels_last, choice.compile, choice.source) == ("off", True, False, "explicit")
    partly = _choose(FakeTimer(ALL), amp="off")
    assert partly.amp == "off" and partly.candidate.label == "fp32 channels_last eager"
    assert _choose(FakeTimer(ALL), comp=False).compile is False


def test_explicit_channels_last_with_bad_bf16_gradients_trains_bf16_in_nchw() -> None:
    valid, refused = candidate_space("bf16", True, False, True, BAD_PROBE)
    assert valid == [Candidate("bf16", False, False)] and not refused


def test_compiled_candidates_only_where_eager_ranking_leaves_a_chance() -> None:
    speeds = {"fp32 NCHW eager": 10.0, "bf16 NCHW eager": 4.0, "fp32 NCHW compiled": 11.0, "bf16 NCHW compiled": 30.0}
    timer = FakeTimer(speeds)
    choice = _choose(timer, cl=False)
    assert "bf16 NCHW compiled" not in timer.built  # 4 x 2 < 10: no chance, not compiled
    skipped = next(r for r in choice.rows if r["label"] == "bf16 NCHW compiled")
    assert skipped["status"] == "skipped" and "best eager" in skipped["reason"]
    assert choice.candidate.label == "fp32 NCHW compiled"
    compiled_row = next(r for r in choice.rows if r["label"] == "fp32 NCHW compiled")
    assert compiled_row["compile_s"] == 42.0


def test_at_most_max_compiled_are_compiled() -> None:
    timer = FakeTimer(ALL)
    _choose(timer)
    assert sum(label.endswith("compiled") for label in timer.built) == autotune.MAX_COMPILED


def test_a_candidate_that_fails_to_build_is_reported_not_chosen() -> None:
    timer = FakeTimer(ALL, fail=("bf16 channels_last compiled",))
    choice = _choose(timer)
    failed = next(r for r in choice.rows if r["label"] == "bf16 channels_last compiled")
    assert failed["status"] == "failed" and failed["reason"] == "RuntimeError: inductor: no C++ compiler"
    assert choice.candidate.label == "bf16 NCHW compiled"


def test_pick_ignores_rows_that_are_not_ok() -> None:
    rows = [
        {"amp": "off", "channels_last": False, "compile": False, "status": "refused", "images_per_s": 99.0},
        {"amp": "bf16", "channels_last": False, "compile": False, "status": "ok", "images_per_s": 5.0},
    ]
    assert pick(rows) == Candidate("bf16", False, False)
    assert pick(rows[:1]) is None


# -- cache ---------------------------------------------------------------------------------------------


def test_cache_hit_reuses_the_choice_without_timing(cache_in_tmp: Path) -> None:
    first = _choose(FakeTimer(ALL))
    assert cache_in_tmp.is_file()
    again = _choose(FakeTimer({}))  # an empty timer would fail if anything were timed
    assert again.source == "cache" and again.candidate == first.candidate and again.rows == first.rows


@pytest.mark.parametrize("change", ["torch", "cpu", "crop"])
def test_cache_is_invalidated_by_torch_cpu_or_crop(change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _choose(FakeTimer(ALL))
    crop = (180, 240)
    if change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "cpu":
        monkeypatch.setattr(autotune, "cpu_name", lambda: "AMD EPYC 7B13")
    else:
        crop = (360, 480)
    timer = FakeTimer(ALL)
    assert _choose(timer, crop=crop).source == "measured" and timer.built


def test_cache_tells_the_fused_bn_prelu_apart_and_keeps_older_keys(cache_in_tmp: Path) -> None:
    """Timings with the fused BN+PReLU are their own entry; without it the key is the one cached before it existed."""
    from dabnet_lib.training.autotune import cache_key

    cands = [Candidate("off", True, False), Candidate("off", True, True)]
    plain = cache_key(cands, 11, DABNetConfig(), (180, 240), 8, 2, fast_ops=True)
    assert "bn_prelu" not in plain and cache_key(cands, 11, DABNetConfig(), (180, 240), 8, 2, True, False) == plain
    assert cache_key(cands, 11, DABNetConfig(), (180, 240), 8, 2, True, True) == {**plain, "bn_prelu": True}
    _choose(FakeTimer(ALL), fast_ops=True)
    timer = FakeTimer(ALL)
    assert _choose(timer, fast_ops=True, bn_prelu=True).source == "measured" and timer.built
    assert _choose(FakeTimer({}), fast_ops=True, bn_prelu=True).source == "cache"
    assert _choose(FakeTimer({}), fast_ops=True).source == "cache"


def test_corrupt_cache_warns_and_measures_again(cache_in_tmp: Path) -> None:
    cache_in_tmp.parent.mkdir(parents=True)
    cache_in_tmp.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        choice = _choose(FakeTimer(ALL))
    assert choice.source == "measured"
    assert json.loads(cache_in_tmp.read_text())["format"] == autotune.CACHE_FORMAT  # rewritten, readable


def test_stale_or_malformed_entry_warns_and_measures_again(cache_in_tmp: Path) -> None:
    _choose(FakeTimer(ALL))
    data = json.loads(cache_in_tmp.read_text())
    (entry,) = data["entries"].values()
    entry["choice"]["amp"] = "fp8"
    cache_in_tmp.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="entry ignored"):
        assert _choose(FakeTimer(ALL)).source == "measured"


def test_timings_from_a_busy_machine_are_used_but_not_cached(cache_in_tmp: Path) -> None:
    said: list[str] = []
    busy = _choose(FakeTimer(ALL, share=0.5), log=said.append)
    assert busy.source == "measured" and busy.candidate.label == "bf16 channels_last compiled"
    assert not cache_in_tmp.exists() and any("busy" in m and "50%" in m and "not cached" in m for m in said)
    timer = FakeTimer(ALL)  # the next run measures again, on a quiet machine, and caches
    assert _choose(timer).source == "measured" and timer.built and cache_in_tmp.is_file()
    assert _choose(FakeTimer({})).source == "cache"


def test_unwritable_cache_only_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DABNET_CACHE_DIR", str(blocker / "sub"))
    with pytest.warns(RuntimeWarning, match="could not be written"):
        assert _choose(FakeTimer(ALL)).source == "measured"


# -- CUDA rule, profiles, real timing, the engine --------------------------------------------------------


@pytest.mark.parametrize(("capability", "amp"), [((7, 5), "fp16"), ((8, 0), "bf16")])
def test_cuda_auto_amp_needs_native_bf16(
    capability: tuple[int, int], amp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d=None: capability)
    choice = choose("auto", "auto", "auto", torch.device("cuda", 0), 19, DABNetConfig(), (512, 1024), 8, 1)
    assert (choice.amp, choice.channels_last, choice.compile, choice.source) == (amp, True, False, "cuda")


def test_smoke_profile_never_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    r = get_recipe("camvid", "smoke")

    def boom(*_a, **_k):
        raise AssertionError("smoke must not measure")

    monkeypatch.setattr(autotune, "measure", boom)
    choice = choose(r.amp, r.channels_last, r.compile, CPU, 11, DABNetConfig(), r.crop_size, r.batch_size, 1)
    assert choice.source == "explicit" and choice.amp == "off" and not choice.compile


def test_cpu_profile_is_auto_and_iteration_defined() -> None:
    r = get_recipe("camvid", "cpu")
    assert (r.amp, r.channels_last, r.compile) == ("auto", "auto", "auto")
    assert r.minutes is None and r.epochs >= 1 and 0 < r.final_fraction < 1


def test_real_step_timer_times_eager_candidates(one_thread: None) -> None:
    timer = StepTimer(11, DABNetConfig(), (32, 48), 2)
    cands = [Candidate("off", False, False), Candidate("off", True, False)]
    if has_bf16_units():
        cands.append(Candidate("bf16", False, False))
    rows = measure(cands, timer, lambda _m: None)
    assert [r["status"] for r in rows] == ["ok"] * len(cands)
    assert all(r["images_per_s"] > 0 for r in rows)
    assert timer.steps[cands[0]] == autotune.ROUNDS * autotune.STEPS_PER_ROUND
    share = timer.cpu_share()
    assert share is not None and 0.0 < share < 1.5  # process CPU time / (wall x threads) of the timed rounds


@pytest.mark.slow
def test_engine_records_and_resume_keeps_the_choice(
    camvid_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dabnet_lib.training.engine import fit

    picked = TrainingChoice(
        "off", True, False, "measured", (autotune._row(Candidate("off", True, False), "ok", 5.0),), 1.5
    )
    calls = []

    def fake_choose(*args, **kwargs):
        calls.append(args)
        return picked

    monkeypatch.setattr("dabnet_lib.training.run_builder.choose", fake_choose)
    recipe = get_recipe("camvid", "smoke").replace(amp="auto", channels_last="auto", compile="auto", epochs=1)
    out = tmp_path / "run"
    fit(recipe, camvid_tiny, out, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    meta = json.loads((out / "recipe.json").read_text())
    assert summary["training_choice"]["label"] == meta["training_choice"]["label"] == "fp32 channels_last eager"
    assert "CPUs" in summary["hardware"] or summary["device"].startswith("cuda")
    with warnings.catch_warnings():
        fit(recipe.replace(epochs=2), camvid_tiny, out, resume=True, quiet=True)
    assert len(calls) == 1  # the resumed run took the checkpoint's choice, no new measurement
    assert json.loads((out / "summary.json").read_text())["training_choice"]["source"] == "checkpoint"
    fit(recipe.replace(epochs=3, compile=False), camvid_tiny, out, resume=True, quiet=True)
    assert len(calls) == 2  # an explicit value in the recipe wins over the checkpoint's choice: chosen anew


@pytest.mark.parametrize(("fast_ops", "expected"), [("auto", True), (False, False)])
def test_training_uses_the_fast_cpu_ops_by_rule_and_records_it(
    fast_ops: object, expected: bool, camvid_tiny: Path, tmp_path: Path
) -> None:
    from dabnet_lib.training.engine import fit

    recipe = get_recipe("camvid", "smoke").replace(epochs=1, fast_ops=fast_ops)
    summary = fit(recipe, camvid_tiny, tmp_path / "run", quiet=True)
    assert summary["training_choice"]["fast_ops"] is expected
    assert ("fast CPU ops" in "\n".join(autotune.choice_lines(summary["training_choice"]))) is expected


@pytest.mark.parametrize("fused", [True, False])
def test_training_fuses_bn_prelu_as_the_recipe_says(
    fused: bool, camvid_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dabnet_lib.model.fast_ops import FastBNPReLU, use_fast_ops
    from dabnet_lib.training import run_builder
    from dabnet_lib.training.engine import fit

    built: list[torch.nn.Module] = []

    def recording(model: torch.nn.Module, enabled: bool = True, bn_prelu: bool = False) -> torch.nn.Module:
        built.append(use_fast_ops(model, enabled, bn_prelu))
        return built[-1]

    monkeypatch.setattr(run_builder, "use_fast_ops", recording)
    fit(get_recipe("camvid", "smoke").replace(epochs=1, fused_bn_prelu=fused), camvid_tiny, tmp_path / "r", quiet=True)
    assert len(built) == 1
    assert sum(type(m) is FastBNPReLU for m in built[0].modules()) == (71 if fused else 0)


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        ({"avx2", "avx512f", "amx_bf16", "avx512_bf16"}, "AVX-512, AMX-BF16"),
        ({"avx2", "fma"}, "AVX2, no bf16 units"),
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX-512, AVX512-BF16"),
    ],
)
def test_measured_numbers_name_the_cpu_units(flags: set[str], text: str) -> None:
    from dabnet_lib.machine import isa_summary

    assert isa_summary(frozenset(flags)) == text
    assert has_bf16_units(frozenset(flags)) is ("no bf16" not in text)


def test_a_measured_choice_is_plain_data_that_weights_only_checkpoints_accept(tmp_path: Path) -> None:
    """torch.__version__ is a TorchVersion object: kept as such in the choice's key, it made a
    checkpoint unreadable under torch.load(weights_only=True), so a measured run could not resume."""
    choice = _choose(FakeTimer(ALL))
    assert type(choice.key["torch"]) is str
    path = tmp_path / "c.pt"
    torch.save({"training_choice": choice.to_dict()}, path)
    assert torch.load(path, weights_only=True)["training_choice"]["label"] == choice.candidate.label
