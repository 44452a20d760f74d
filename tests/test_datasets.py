"""dabnet_lib.data.datasets and dabnet_lib.data.statistics: real CamVid, the generated Cityscapes layout,
statistics and their cache, and every bad-input message."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cityscapes_fixture import CITIES, KNOWN_PIXELS, KNOWN_RGB
from dabnet_lib.data import statistics as stats_mod
from dabnet_lib.data.datasets import (
    CAMVID,
    CITYSCAPES,
    CITYSCAPES_LABELID_TO_TRAINID,
    DATASETS,
    CamVid,
    Cityscapes,
    DatasetError,
    build_dataset,
    get_info,
)
from dabnet_lib.data.statistics import check, default_cache_dir, statistics, validate


def camvid_view(source: Path, dest: Path, per_split: int, splits=("train", "val", "test")) -> Path:
    """A SegNet-layout folder of symlinks to the first ``per_split`` pairs of each real split."""
    for split in splits:
        for folder in (split, f"{split}annot"):
            (dest / folder).mkdir(parents=True)
            for path in sorted((source / folder).glob("*.png"))[:per_split]:
                (dest / folder / path.name).symlink_to(path.resolve())
    return dest


def replace_with_file(path: Path, data: bytes | np.ndarray) -> None:
    """Turn a symlink of the view into a real file (never touching the symlink's target)."""
    path.unlink()
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        assert cv2.imwrite(str(path), data)


# ------------------------------------------------------------------------------------ constants


def test_dataset_info_constants() -> None:
    assert get_info("CamVid") is CAMVID and get_info("cityscapes") is CITYSCAPES
    assert set(DATASETS) == {"camvid", "cityscapes"}
    assert CAMVID.num_classes == 11 and CAMVID.ignore_index == 11 and CAMVID.native_size == (360, 480)
    assert CITYSCAPES.num_classes == 19 and CITYSCAPES.ignore_index == 255
    assert CITYSCAPES.native_size == (1024, 2048)
    for info in (CAMVID, CITYSCAPES):
        assert info.palette.shape == (info.num_classes + 1, 3) and info.palette.dtype == np.uint8
        assert len({tuple(c) for c in info.palette[:-1]}) == info.num_classes  # distinct class colours
        assert not info.palette.flags.writeable
    assert CITYSCAPES.classes[0] == "road" and CITYSCAPES.classes[-1] == "bicycle"
    with pytest.raises(DatasetError, match="unknown dataset 'kitti'"):
        get_info("kitti")


def test_cityscapes_lookup_table_matches_official_labels() -> None:
    from cityscapesscripts.helpers.labels import labels

    assert CITYSCAPES_LABELID_TO_TRAINID.shape == (256,)
    for label in labels:
        if 0 <= label.id < 256:
            expected = label.trainId if 0 <= label.trainId < 255 else 255
            assert CITYSCAPES_LABELID_TO_TRAINID[label.id] == expected, label.name
    assert CITYSCAPES_LABELID_TO_TRAINID[200] == 255


# ------------------------------------------------------------------------------------ real CamVid


def test_camvid_split_sizes(camvid_root: Path) -> None:
    sizes = {split: len(CamVid(camvid_root, split)) for split in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 367, "val": 101, "test": 233, "trainval": 468}
    trainval = CamVid(camvid_root, "trainval")
    assert trainval.samples == CamVid(camvid_root, "train").samples + CamVid(camvid_root, "val").samples
    assert all(img.name == lbl.name and lbl.parent.name == img.parent.name + "annot" for img, lbl in trainval.samples)


@pytest.mark.parametrize("split", ["train", "test"])
def test_camvid_samples(camvid_root: Path, split: str) -> None:
    ds = build_dataset("camvid", camvid_root, split)
    assert isinstance(ds, CamVid) and ds.info is CAMVID and ds.split == split
    for i in (0, len(ds) - 1):
        image, label = ds.load(i)
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= set(range(12))
        image_path, label_path = ds.samples[i]
        assert ds.name(i) == image_path.stem
        # RGB order and values agree with an independent decoder
        np.testing.assert_array_equal(image, np.asarray(Image.open(image_path).convert("RGB")))
        np.testing.assert_array_equal(label, np.asarray(Image.open(label_path)))
        pair = ds[i]
        np.testing.assert_array_equal(pair[0], image)


def test_camvid_cache_in_memory_skips_decoding(camvid_root: Path, tmp_path: Path) -> None:
    view = camvid_view(camvid_root, tmp_path / "cv", 3, splits=("val",))
    ds = CamVid(view, "val")
    expected = [ds.load(i) for i in range(len(ds))]
    assert ds.cache_in_memory(progress=False) is ds
    shutil.rmtree(view / "val")  # decoding again would now fail
    for i, (image, label) in enumerate(expected):
        cached_image, cached_label = ds.load(i)
        np.testing.assert_array_equal(cached_image, image)
        np.testing.assert_array_equal(cached_label, label)
        assert not cached_image.flags.writeable


def test_camvid_official_list_files(camvid_root: Path, tmp_path: Path) -> None:
    view = camvid_view(camvid_root, tmp_path / "cv", 3, splits=("train",))
    names = sorted(p.name for p in (view / "train").glob("*.png"))
    (view / "camvid_train_list.txt").write_text(
        f"train/{names[2]} trainannot/{names[2]}\n\n"
        f"/SegNet/CamVid/train/{names[0]} /SegNet/CamVid/trainannot/{names[0]}\n"
    )
    ds = CamVid(view, "train")
    assert [(i.name, lb.name) for i, lb in ds.samples] == [(names[2], names[2]), (names[0], names[0])]
    assert ds.load(1)[0].shape == (360, 480, 3)
    (view / "camvid_test_list.txt").write_text("test/missing.png testannot/missing.png\n")
    with pytest.raises(DatasetError, match=r"camvid_test_list.txt lists 2 missing file\(s\).*missing.png"):
        CamVid(view, "test")


# ------------------------------------------------------------------------------------ Cityscapes fixture


def test_cityscapes_layout_and_trainids(cityscapes_root: Path) -> None:
    sizes = {split: len(Cityscapes(cityscapes_root, split)) for split in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 3, "val": 1, "trainval": 4, "test": 1}
    ds = Cityscapes(cityscapes_root, "train")
    assert {img.parent.name for img, _ in ds.samples} == set(CITIES["train"])
    assert ds.name(0) == "aachen_000000_000019_leftImg8bit"
    for i in range(len(ds)):
        image, label = ds.load(i)
        assert image.shape == (64, 128, 3) and label.shape == (64, 128) and label.dtype == np.uint8
        assert tuple(image[0, 0]) == KNOWN_RGB
        for (row, col), (_label_id, train_id) in KNOWN_PIXELS.items():
            assert label[row, col] == train_id, (row, col)
        assert set(np.unique(label).tolist()) <= set(range(19)) | {255}
        raw = cv2.imread(str(ds.samples[i][1]), cv2.IMREAD_UNCHANGED)
        assert np.all(label[raw <= 1] == 255)  # unlabeled and ego vehicle are ignored everywhere


def test_cityscapes_test_split_has_no_labels(cityscapes_root: Path) -> None:
    ds = Cityscapes(cityscapes_root, "test")
    assert ds.samples[0][1] is None and not ds.has_labels
    image, label = ds.load(0)
    assert label.shape == image.shape[:2] and np.all(label == 255)
    with pytest.raises(DatasetError, match="has no labels"):
        statistics(ds, cache_dir=None)


def test_cityscapes_bad_input(cityscapes_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "cs"
    shutil.copytree(cityscapes_root, root)
    shutil.rmtree(root / "gtFine" / "val")
    with pytest.raises(DatasetError, match=r"missing folder\(s\) .*gtFine/val.*leftImg8bit_trainvaltest"):
        Cityscapes(root, "val")
    label_path = Cityscapes(root, "train").samples[0][1]
    label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    label[5, 5] = 250
    cv2.imwrite(str(label_path), label)
    with pytest.raises(DatasetError, match=rf"label {label_path} holds invalid values 250"):
        Cityscapes(root, "train").load(0)


# ------------------------------------------------------------------------------------ bad input


def test_missing_root_and_split_folder(tmp_path: Path, camvid_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist.*SegNet layout.*make data"):
        CamVid(tmp_path / "nowhere", "train")
    view = camvid_view(camvid_root, tmp_path / "cv", 1, splits=("train",))
    with pytest.raises(DatasetError, match=r"missing folder\(s\) .*cv/val, .*cv/valannot.*make data"):
        CamVid(view, "val")
    with pytest.raises(DatasetError, match="unknown split 'training'"):
        CamVid(view, "training")
    (view / "train" / "extra.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"1 file\(s\) without a label in .*trainannot: extra.png"):
        CamVid(view, "train")


def test_each_bad_input_message_and_validate(camvid_root: Path, tmp_path: Path) -> None:
    view = camvid_view(camvid_root, tmp_path / "cv", 4, splits=("train",))
    ds = CamVid(view, "train")
    (img0, _), (img1, lbl1), (_, lbl2), (img3, _) = ds.samples
    replace_with_file(img0, img0.resolve().read_bytes()[:2000])  # truncated PNG
    replace_with_file(img3, b"not a png at all")
    small = cv2.resize(cv2.imread(str(lbl1), cv2.IMREAD_UNCHANGED), (240, 180), interpolation=cv2.INTER_NEAREST)
    replace_with_file(lbl1, small)
    bad = cv2.imread(str(lbl2), cv2.IMREAD_UNCHANGED)
    bad[0, :3] = (12, 200, 12)
    replace_with_file(lbl2, bad)

    with pytest.raises(DatasetError, match=rf"cannot read image {img0}"):
        ds.load(0)
    with pytest.raises(DatasetError) as size_err:
        ds.load(1)
    assert str(img1) in str(size_err.value) and str(lbl1) in str(size_err.value)
    assert "480x360" in str(size_err.value) and "240x180" in str(size_err.value)
    with pytest.raises(
        DatasetError, match=rf"label {lbl2} holds invalid values 12, 200: .*0..10 or the ignore index 11"
    ):
        ds.load(2)

    problems = validate(ds, progress=False)
    assert len(problems) == 4
    for expected in (
        f"cannot read image {img0}",
        f"label {lbl1} is 240x180",
        f"label {lbl2} holds invalid values",
        f"cannot read image {img3}",
    ):
        assert sum(expected in p for p in problems) == 1, expected
    with pytest.raises(DatasetError) as all_err:
        check(ds, progress=False)
    assert str(all_err.value).startswith("4 problem(s) in camvid train")
    assert all(p in str(all_err.value) for p in problems)
    assert validate(CamVid(camvid_view(camvid_root, tmp_path / "ok", 2, ("val",)), "val"), progress=False) == []


# ------------------------------------------------------------------------------------ statistics


def direct_statistics(ds: CamVid) -> dict:
    """Reference: all pixels at once, decoded with PIL."""
    images = np.stack([np.asarray(Image.open(i).convert("RGB")) for i, _ in ds.samples]).reshape(-1, 3)
    labels = np.stack([np.asarray(Image.open(lb)) for _, lb in ds.samples]).ravel()
    counts = np.array([(labels == c).sum() for c in range(11)])
    freq = counts / counts.sum()
    return {
        "mean": images.astype(np.float64).mean(0),
        "std": images.astype(np.float64).std(0),
        "class_counts": counts,
        "class_frequencies": freq,
        "class_weights": 1 / np.log(1.10 + freq),
        "ignored_pixels": int((labels == 11).sum()),
    }


def test_statistics_match_direct_numpy(camvid_root: Path, tmp_path: Path) -> None:
    ds = CamVid(camvid_view(camvid_root, tmp_path / "cv", 4, splits=("train",)), "train")
    got = statistics(ds, cache_dir=tmp_path / "cache", progress=False)
    ref = direct_statistics(ds)
    assert got["num_images"] == 4 and got["num_pixels"] == 4 * 360 * 480 and not got["cached"]
    for key in ("mean", "std", "class_frequencies", "class_weights"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, atol=1e-9, err_msg=key)
    assert got["class_counts"] == ref["class_counts"].tolist()
    assert got["ignored_pixels"] == ref["ignored_pixels"]


def test_statistics_cache_hit_and_invalidation(
    camvid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = camvid_view(camvid_root, tmp_path / "cv", 3, splits=("train",))
    cache = tmp_path / "cache"
    first = statistics(CamVid(view, "train"), cache_dir=cache, progress=False)
    assert [p.name for p in cache.iterdir()] == [Path(first["cache_file"]).name]  # no temp files left
    stored = json.loads(Path(first["cache_file"]).read_text())
    assert stored["stats"]["mean"] == first["mean"]

    real_compute = stats_mod.compute_statistics
    calls = []
    monkeypatch.setattr(
        stats_mod, "compute_statistics", lambda d, progress: calls.append(len(d)) or real_compute(d, progress)
    )
    again = statistics(CamVid(view, "train"), cache_dir=cache, progress=False)
    assert again["cached"] and calls == [] and again["mean"] == first["mean"]

    extra = sorted((camvid_root / "train").glob("*.png"))[3]
    (view / "train" / extra.name).symlink_to(extra)
    (view / "trainannot" / extra.name).symlink_to(camvid_root / "trainannot" / extra.name)
    changed = statistics(CamVid(view, "train"), cache_dir=cache, progress=False)
    assert not changed["cached"] and calls == [4] and changed["num_images"] == 4
    assert changed["mean"] != first["mean"]

    label = next((view / "trainannot").iterdir())
    replace_with_file(label, cv2.imread(str(label), cv2.IMREAD_UNCHANGED))  # same content, new file
    assert not statistics(CamVid(view, "train"), cache_dir=cache, progress=False)["cached"]
    assert calls == [4, 4]
    assert statistics(CamVid(view, "train"), cache_dir=cache, progress=False, refresh=True)["cached"] is False


def test_default_cache_dir_falls_back_for_read_only_data(
    camvid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DABNET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    writable = camvid_view(camvid_root, tmp_path / "rw", 1, splits=("val",))
    assert default_cache_dir(writable) == writable / ".dabnet_cache"
    read_only = camvid_view(camvid_root, tmp_path / "ro", 2, splits=("val",))
    os.chmod(read_only, 0o555)
    try:
        assert default_cache_dir(read_only) == tmp_path / "xdg" / "dabnet"
        result = statistics(CamVid(read_only, "val"), progress=False)
        assert Path(result["cache_file"]).parent == tmp_path / "xdg" / "dabnet"
        assert not (read_only / ".dabnet_cache").exists()
    finally:
        os.chmod(read_only, 0o755)
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir(writable) == tmp_path / "explicit"


def test_cityscapes_statistics_class_counts(cityscapes_root: Path, tmp_path: Path) -> None:
    ds = Cityscapes(cityscapes_root, "train")
    got = statistics(ds, cache_dir=tmp_path, progress=False)
    raw = np.stack([cv2.imread(str(lb), cv2.IMREAD_UNCHANGED) for _, lb in ds.samples])
    train_ids = CITYSCAPES_LABELID_TO_TRAINID[raw]
    assert got["class_counts"] == [int((train_ids == c).sum()) for c in range(19)]
    assert got["ignored_pixels"] == int((train_ids == 255).sum()) > 0
