"""The notebook-facing helpers: exploration, ablation bookkeeping, qualitative picks, report tables."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dabnet_lib.data.datasets import CAMVID, build_dataset
from dabnet_lib.errors import DabnetError
from dabnet_lib.model.dabnet import DABNet, count_parameters
from dabnet_lib.workbook import exploration
from dabnet_lib.workbook.ablations import VARIANTS
from dabnet_lib.workbook.qualitative import median_index, pick_examples
from dabnet_lib.workbook.reports import (
    MAX_MARKDOWN_COLUMNS,
    VIEWS,
    TableView,
    provenance,
    rerender_markdown,
    write_table,
)
from dabnet_lib.workbook.runner import (
    REPO_ROOT,
    Layout,
    ParameterError,
    main,
    notebook_parameters,
    resolve,
    training_budget,
    training_result,
)


def test_split_summary_on_real_camvid(camvid_root: Path) -> None:
    table = exploration.split_summary("camvid", camvid_root).set_index("split")
    assert table.loc[["train", "val", "trainval", "test"], "images"].tolist() == [367, 101, 468, 233]
    assert table.loc["test", "image_sizes"] == "360x480: 233"


def test_class_presence_matches_labels(camvid_root: Path) -> None:
    ds = build_dataset("camvid", camvid_root, "val")
    ds.samples = ds.samples[:3]
    presence = exploration.class_presence(ds, progress=False)
    assert presence.shape == (3, 11) and list(presence.columns) == list(CAMVID.classes)
    _, label = ds.load(1)
    expected = [bool((label == c).any()) for c in range(11)]
    assert presence.iloc[1].tolist() == expected


def test_class_table_columns() -> None:
    stats = {
        "class_counts": [3, 1],
        "class_frequencies": [0.75, 0.25],
        "class_weights": [1 / math.log(1.85), 1 / math.log(1.35)],
    }
    info = type("Info", (), {"classes": ("a", "b")})()
    table = exploration.class_table(stats, info)
    assert table["weight"].round(4).tolist() == [round(1 / math.log(1.85), 4), round(1 / math.log(1.35), 4)]


def test_variants_are_distinct_configs_and_default_is_paper() -> None:
    configs = [cfg for cfg, _ in VARIANTS.values()]
    assert len(set(configs)) == len(configs) >= 6
    assert count_parameters(DABNet(11, configs[0])) == 754_571


def test_pick_examples_best_median_worst() -> None:
    ranking = pd.DataFrame({"index": range(7), "name": list("abcdefg"), "miou": np.linspace(0.9, 0.3, 7)})
    picks = pick_examples(ranking, per_group=1)
    assert picks["group"].tolist() == ["best", "median", "worst"]
    assert picks["name"].tolist() == ["a", "d", "g"]
    small = pick_examples(ranking.iloc[:2], per_group=2)
    assert sorted(small["name"]) == ["a", "b"]  # each image at most once
    shuffled = ranking.assign(index=[5, 2, 6, 0, 3, 1, 4])  # dataset order differs from rank order
    assert median_index(shuffled) == 0  # the 4th of 7 by mIoU


def test_write_table_with_provenance(tmp_path: Path) -> None:
    df = pd.DataFrame({"variant": ["paper", "x"], "miou": [51.234, float("nan")]})
    meta = provenance("smoke", "2 epochs", "make nb N=02")
    csv, md = write_table(df, tmp_path / "t", meta, "Title", ["a note"])
    assert pd.read_csv(csv)["miou"].iloc[0] == pytest.approx(51.234)
    text = md.read_text()
    for key in ("profile", "budget", "hardware", "date", "commit", "command"):
        assert f"**{key}**" in text
    assert "51.23" in text and "—" in text and "- a note" in text


def _markdown_tables(text: str) -> list[list[str]]:
    """The header cells of every pipe table in a Markdown text."""
    lines = text.splitlines()
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line, below in itertools.pairwise(lines)
        if line.startswith("|") and below.startswith(("|:", "|-"))
    ]


def test_a_view_shows_the_readers_columns_and_moves_shared_facts_up(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "variant": ["eager", "int8", "paper"],
            "ms": [55.0, 20.8, float("nan")],
            "device": ["Xeon", "Xeon", None],
            "threads": [2.0, 2.0, float("nan")],
            "load": [0.5, 1.25, float("nan")],
            "build_s": [0.1, 33.0, float("nan")],
            "error": [None, "RuntimeError: no int8 kernel", None],
        }
    )
    view = TableView(("variant", "ms"), facts=("device", "threads", "load"), problems="error")
    csv, md = write_table(
        df, tmp_path / "speed", provenance("smoke", "1 call", "make nb N=06"), "Speed", ["a note"], view=view
    )
    assert list(pd.read_csv(csv).columns) == list(df.columns)  # the .csv keeps everything
    text = md.read_text()
    assert _markdown_tables(text) == [["variant", "ms"]]
    assert "- **device**: Xeon" in text and "- **threads**: 2\n" in text and "- **load**: 0.5–1.25" in text
    assert "- **table**: 2 of 7 columns; every column in `speed.csv`" in text
    assert "- error: int8, 20.8: RuntimeError: no int8 kernel" in text and "- a note" in text
    assert "build_s" not in text
    # rebuilt from the .csv and its own header: the same file, provenance kept
    before = text
    md.write_text(text.replace("- **load**: 0.5–1.25\n", ""))
    VIEWS["speed"] = view
    try:
        assert rerender_markdown(tmp_path / "speed").read_text() == before
    finally:
        del VIEWS["speed"]


def test_committed_report_tables_stay_readable() -> None:
    """Every committed reports/*.md table has at most MAX_MARKDOWN_COLUMNS columns, keeps its provenance,
    and is what its .csv renders to under the current view (no stale .md)."""
    reports = sorted((REPO_ROOT / "reports").glob("*.md"))
    assert {p.stem for p in reports} >= {"fps", "ablations", "evaluation", "data_classes"}
    for md in reports:
        text = md.read_text()
        tables = _markdown_tables(text)
        assert tables and all(len(t) <= MAX_MARKDOWN_COLUMNS for t in tables), (md.name, [len(t) for t in tables])
        for key in ("profile", "budget", "hardware", "date", "commit", "command"):
            assert f"- **{key}**:" in text, (md.name, key)
        if md.stem in VIEWS:
            assert _markdown_tables(text)[0] == [
                c for c in VIEWS[md.stem].columns if c in pd.read_csv(md.with_suffix(".csv")).columns
            ]


def test_training_result_and_budget(tmp_path: Path) -> None:
    with pytest.raises(DabnetError, match="run notebook 03 first"):
        training_result(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "summary.json").write_text(json.dumps({"result": str(tmp_path / "train" / "last.pt")}))
    assert training_result(tmp_path) == tmp_path / "train" / "last.pt"
    ckpt = {
        "epoch": 12,
        "iteration": 3456,
        "recipe": {
            "profile": "cpu",
            "minutes": 60.0,
            "train_split": "trainval",
            "batch_size": 8,
            "crop_size": [180, 240],
            "final_fraction": 0.25,
            "final_crop_size": [360, 480],
        },
    }
    assert training_budget(ckpt) == (
        "cpu profile: 60 min wall-clock on trainval, batch 8, crop 180x240 -> 360x480; "
        "reached epoch 12, 3,456 iterations"
    )
    assert "unknown" in training_budget({"epoch": 3})
    timed = {
        **ckpt,
        "elapsed_s": 1446.0,
        "hardware": "AMD EPYC 7B13 (2 CPUs)",
        "training_choice": {"label": "fp32 channels_last eager"},
    }
    assert training_budget(timed).endswith(
        "; trained in 24.1 min on AMD EPYC 7B13 (2 CPUs) as fp32 channels_last eager"
    )


def test_notebook_names_resolve() -> None:
    assert resolve("3") == resolve("03") == resolve("03_training.ipynb") == "03_training"
    with pytest.raises(ParameterError, match="unknown notebook '09'; known: 01_data_exploration"):
        resolve("09")


def test_run_all_publishes_03_and_evaluates_the_published_file(tmp_path: Path) -> None:
    layout = Layout(REPO_ROOT / "reports", tmp_path / "runs")
    p03 = notebook_parameters("03", "cpu", "camvid", layout)
    assert p03["publish_checkpoint"] == "reports/checkpoints/dabnet_camvid_cpu.pt"
    outside = Layout(tmp_path / "reports", tmp_path / "runs")
    assert "checkpoint" not in notebook_parameters("04", "smoke", "camvid", outside)  # 03 not run yet
    published = tmp_path / "reports" / "checkpoints" / "dabnet_camvid_smoke.pt"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"weights")
    for name in ("04", "05_qualitative_results", "06"):
        assert notebook_parameters(name, "smoke", "camvid", outside)["checkpoint"] == str(published)
    assert (
        notebook_parameters("04", "smoke", "camvid", outside, extra={"checkpoint": "mine.pt"})["checkpoint"]
        == "mine.pt"
    )
    assert "checkpoint" not in notebook_parameters("02", "smoke", "camvid", outside)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "09"], "unknown notebook '09'"),
        (["run", "03", "--param", "lr"], "--param expects KEY=VALUE, got 'lr'"),
    ],
)
def test_the_runner_refuses_bad_input_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {err.strip()[7:]}"] and needle in err and "Traceback" not in err
