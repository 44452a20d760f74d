"""The workbook: clean notebook sources, documented parameters, all six executed end to end (smoke),
and run-all's failure path (names the notebook, keeps its partial output, exits non-zero)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from dabnet_lib.workbook.runner import (
    NOTEBOOK_DIR,
    NOTEBOOKS,
    REPO_ROOT,
    Layout,
    NotebookFailed,
    ParameterError,
    main,
    run_notebook,
)

COMMON_PARAMETERS = {"dataset", "data_root", "profile", "run_dir", "reports_dir", "seed"}
OWN_PARAMETERS = {
    "01_data_exploration": {"max_images"},
    "02_dab_ablations": {"variants", "iters_per_unit", "noise_study", "train", "live"},
    "03_training": {"overrides", "publish_checkpoint", "live"},
    "04_evaluation": {"checkpoint", "split", "limit"},
    "05_qualitative_results": {"checkpoint", "split", "per_group", "limit"},
    "06_fps_profiling": {"checkpoint", "variants", "sizes", "batches", "threads", "device"},
}


def test_the_six_notebooks_exist_in_order() -> None:
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == list(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_clean_and_parameterised(name: str) -> None:
    book = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
    assert book.cells[0].cell_type == "markdown" and "**Question:**" in book.cells[0].source
    assert "**Budget:**" in book.cells[0].source
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    found = set(pm.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb")))
    assert COMMON_PARAMETERS | OWN_PARAMETERS[name] == found


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, camvid_root: Path) -> dict[str, Path]:
    """Execute 01..06 with profile=smoke on the real CamVid, in order, into a temp folder."""
    base = tmp_path_factory.mktemp("workbook")
    params = {
        "dataset": "camvid",
        "data_root": str(camvid_root),
        "profile": "smoke",
        "run_dir": str(base / "runs"),
        "reports_dir": str(base / "reports"),
        "seed": 0,
    }
    done = {}
    for name in NOTEBOOKS:
        done[name] = run_notebook(name, params, base / "reports" / "notebooks", progress=False)
    return {"base": base, **done}


def _outputs(path: Path) -> str:
    book = nbformat.read(path, as_version=4)
    texts = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise AssertionError(f"{path.name}: {out['ename']}: {out['evalue']}")
            texts.append(json.dumps(out.get("data", {})) + out.get("text", ""))
    return "\n".join(texts)


@pytest.mark.slow
def test_smoke_workbook_writes_every_report(smoke_run: dict[str, Path]) -> None:
    reports = smoke_run["base"] / "reports"
    for name in NOTEBOOKS:
        _outputs(smoke_run[name])  # no error outputs
    for table in ("data_classes", "ablations", "evaluation", "fps", "variant_accuracy"):
        assert (reports / f"{table}.csv").is_file() and (reports / f"{table}.md").is_file(), table
        md = (reports / f"{table}.md").read_text()
        for key in ("profile", "budget", "hardware", "date", "commit"):
            assert f"**{key}**" in md, f"{table}.md lacks its {key}"
        assert "smoke" in md
    for figure in ("ablations.png", "qualitative_test.png"):
        assert (reports / "figures" / figure).stat().st_size > 1000


@pytest.mark.slow
def test_smoke_tables_hold_measured_values(smoke_run: dict[str, Path]) -> None:
    reports = smoke_run["base"] / "reports"
    ablations = pd.read_csv(reports / "ablations.csv")
    assert len(ablations) == 10 and ablations["variant"].iloc[0] == "paper"
    assert (ablations["seeds"] == 2).all() and (ablations["n_paired"] == 2).all()  # smoke: 2 paired seeds each
    assert ablations["val_miou"].between(0, 100).all() and (ablations["params"] > 0).all()
    assert ablations.loc[ablations["variant"] == "paper", "params"].item() == 754_571
    others = ablations[ablations["variant"] != "paper"]
    assert (others["ci_low"] <= others["delta"]).all() and (others["delta"] <= others["ci_high"]).all()
    assert set(others["verdict"]) <= {"better", "worse", "not resolved"}
    units = sorted(p.name for p in (reports / "ablations").glob("*.json"))
    assert len(units) == 22 and "kernel_5__seed1__it4.json" in units and "paper__seed1__it2.json" in units
    noise = pd.read_csv(reports / "ablations_noise.csv")
    assert list(noise["iters"]) == [2, 4] and (noise["seeds"] == 2).all()
    evaluation = pd.read_csv(reports / "evaluation.csv")
    assert {"mIoU (standard)", "mIoU (official rule)"} <= set(evaluation["class"])
    fps = pd.read_csv(reports / "fps.csv")
    assert "eager" in set(fps["variant"]) and (fps.loc[fps["variant"] == "eager", "fps"] > 0).all()


@pytest.mark.slow
def test_executed_training_notebook_stays_small(smoke_run: dict[str, Path]) -> None:
    """An executed copy gets live=False: no progress widget, no live figure, a few text lines."""
    path = smoke_run["03_training"]
    book = nbformat.read(path, as_version=4)
    streams = [o.get("text", "") for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    lines = "".join(streams).splitlines()
    assert 3 <= sum(" iteration " in line for line in lines) <= 12, lines
    assert len(lines) < 40, lines
    assert "application/vnd.jupyter.widget-view+json" not in _outputs(path)
    assert "dabnet-live-plot" not in _outputs(path)
    assert path.stat().st_size < 300_000
    assert list((smoke_run["base"] / "runs" / "train").glob("events.out.tfevents.*"))  # TensorBoard too


@pytest.mark.parametrize(
    ("param", "message"),
    [
        (
            "limti=3",
            "notebook 04_evaluation has no parameter 'limti': did you mean 'limit'? valid: dataset, data_root, "
            "profile, run_dir, reports_dir, seed, checkpoint, split, limit",
        ),
        ("split=3", "notebook 04_evaluation: parameter 'split' takes str (default \"test\"), got int 3; valid: "),
        ("seed=1.5", "parameter 'seed' takes int (default 0), got float 1.5"),
        ("seed=True", "parameter 'seed' takes int (default 0), got bool True"),
    ],
)
def test_workbook_checks_parameters_before_running(
    param: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["run", "04", "--profile", "smoke", "--reports", str(tmp_path / "reports"), "-p", param]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "reports").exists()  # nothing executed, nothing written


def test_parameter_annotations_and_float_defaults() -> None:
    from dabnet_lib.workbook.runner import check_parameters

    declared = {
        "variants": {"default": '"all"', "inferred_type_name": "str|list"},
        "lr": {"default": "0.001", "inferred_type_name": "None"},
        "limit": {"default": "None", "inferred_type_name": "None"},
    }
    check_parameters("02", {"variants": ["paper", "local_only"], "lr": 2}, declared)  # int is fine for a float
    check_parameters("02", {"limit": 3}, declared)  # a None default shows no type: any value
    with pytest.raises(ParameterError, match=r"takes str \| list"):
        check_parameters("02", {"variants": 3}, declared)
    with pytest.raises(ParameterError, match="'lr' takes float"):
        check_parameters("02", {"lr": "fast"}, declared)
    with pytest.raises(ParameterError, match="no parameter 'variant': did you mean 'variants'"):
        check_parameters("02", {"variant": "all"}, declared)


@pytest.mark.slow
def test_viewer_runs_under_papermill(smoke_run: dict[str, Path]) -> None:
    text = _outputs(smoke_run["05_qualitative_results"])
    assert "application/vnd.jupyter.widget-view+json" in text


@pytest.mark.slow
def test_run_all_stops_at_the_failing_notebook(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    env = {**os.environ, "CI": "1"}
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "notebooks",
            f"REPORTS={reports}",
            "PROFILE=smoke",
            f"DATA_ROOT={tmp_path / 'no_such_camvid'}",
            f"PY={sys.executable}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "notebook 01_data_exploration failed" in proc.stderr
    assert "make data" in proc.stderr  # the dataset error tells the user how to fix it
    assert (reports / "notebooks" / "01_data_exploration.failed.ipynb").is_file()
    assert not (reports / "notebooks" / "01_data_exploration.ipynb").exists()
    assert not (reports / "notebooks" / "02_dab_ablations.ipynb").exists()


def test_a_failing_cell_is_reported_by_its_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_source: str, partial: str, **_kwargs: object) -> None:
        Path(partial).write_text("{}")
        raise pm.PapermillExecutionError(3, 1, "cell", "DatasetError", "no CamVid here: run `make data`", [])

    monkeypatch.setattr(pm, "execute_notebook", fail)
    with pytest.raises(NotebookFailed, match=r"01_data_exploration failed after \d+ s: DatasetError: no CamVid here"):
        run_notebook("01", {}, tmp_path)
    assert (tmp_path / "01_data_exploration.failed.ipynb").is_file()


def test_smoke_layout_never_touches_committed_reports() -> None:
    smoke = Layout.for_profile("smoke", "camvid")
    assert "runs" in smoke.reports.parts and smoke.reports != REPO_ROOT / "reports"
    assert Layout.for_profile("cpu", "camvid").reports == REPO_ROOT / "reports"
