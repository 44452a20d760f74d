"""dabnet_lib.evaluation.inference: Predictor, predict_folder outputs, corrupt inputs, Cityscapes submission export."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dabnet_lib.data.colors import colorize
from dabnet_lib.data.datasets import CAMVID, CITYSCAPES, build_dataset
from dabnet_lib.errors import DatasetError
from dabnet_lib.evaluation.inference import Predictor, cityscapes_label_lut, export_cityscapes, predict_folder
from dabnet_lib.model.dabnet import DABNet
from dabnet_lib.training.metrics import ConfusionMatrix
from dabnet_lib.training.prediction import class_argmax
from dabnet_lib.training.validation import evaluate


class Constant(nn.Module):
    """Predicts class ``cls`` everywhere."""

    def __init__(self, cls: int, num_classes: int) -> None:
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])
        out[:, self.cls] = 1.0
        return out


class Oracle(nn.Module):
    """Logits = one-hot of the label of the stored image equal to the (de-normalised) input."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], mean: tuple[float, ...], num_classes: int) -> None:
        super().__init__()
        self.pairs, self.num_classes = pairs, num_classes
        self.mean = torch.tensor(mean).view(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for item in x:
            raw = (item + self.mean).permute(1, 2, 0).numpy()
            label = min(self.pairs, key=lambda p: float(np.abs(p[0].astype(np.float32) - raw).mean()))[1]
            lab = torch.from_numpy(label.astype(np.int64)).clamp(max=self.num_classes - 1)
            out.append(nn.functional.one_hot(lab, self.num_classes).permute(2, 0, 1).float())
        return torch.stack(out)


def _images(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_class_argmax_matches_torch_for_both_layouts() -> None:
    logits = torch.randn(2, 11, 30, 41, generator=torch.Generator().manual_seed(0))
    logits[0, 4, 0, 0] = logits[0, 2, 0, 0] = 99.0  # a tie: the first index wins, as in torch
    for x in (logits, logits.contiguous(memory_format=torch.channels_last), logits.double()):
        out = class_argmax(x)
        assert out.dtype == torch.int64 and out.shape == (2, 30, 41)
        assert torch.equal(out, logits.argmax(1)) and out[0, 0, 0] == 2


@pytest.fixture(scope="module")
def net() -> DABNet:
    torch.manual_seed(0)
    return DABNet(11).eval()


def test_predictor_shapes_and_consistency(net: DABNet) -> None:
    pred = Predictor(net, CAMVID.official_mean, device="cpu")
    a, b = _images(2, 52, 76)
    logits = pred.logits(a)
    assert logits.shape == (11, 52, 76) and logits.dtype == np.float32 and np.isfinite(logits).all()
    label = pred.predict(a)
    assert label.shape == (52, 76) and label.dtype == np.int64
    assert np.array_equal(label, logits.argmax(0))
    batch = pred.predict_batch([a, b])
    assert batch.shape == (2, 52, 76)
    assert (batch[0] == label).mean() > 0.999 and (batch[1] == pred.predict(b)).mean() > 0.999
    half = Predictor(net, CAMVID.official_mean, device="cpu", scale=0.5)
    assert half.predict(a).shape == (52, 76) and half.logits(a).shape == (11, 52, 76)
    with pytest.raises(ValueError, match="one size"):
        pred.predict_batch([a, _images(1, 40, 40)[0]])


@pytest.mark.usefixtures("one_thread")
def test_prediction_and_evaluation_score_the_same_pixels(net: DABNet, camvid_tiny: Path) -> None:
    """Predictor and evaluate() share one normalise -> forward -> upsample -> argmax path: the predictions of
    `dabnet predict`, counted by hand, give evaluate()'s confusion matrix (also at half scale)."""
    val = build_dataset("camvid", camvid_tiny, "val")
    for scale in (1.0, 0.5):
        predictor = Predictor(net, CAMVID.official_mean, device="cpu", scale=scale)
        by_hand = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index)
        for i in range(len(val)):
            image, label = val.load(i)
            by_hand.update(predictor.predict(image), label)
        scored = evaluate(net, val, device="cpu", progress=False, scale=scale)
        assert scored["images"] == len(val) > 0
        np.testing.assert_array_equal(scored["confusion"], by_hand.compute()["confusion"])


def test_predictor_normalises_with_mean_and_std() -> None:
    seen: list[torch.Tensor] = []

    class Probe(Constant):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return super().forward(x)

    image = _images(1, 20, 24)[0]
    Predictor(Probe(0, 11), (10.0, 20.0, 30.0), (2.0, 4.0, 5.0), device="cpu").predict(image)
    expected = (
        torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) - torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)
    ) / torch.tensor([2.0, 4.0, 5.0]).view(3, 1, 1)
    assert torch.allclose(seen[0][0], expected, atol=1e-4)


def test_from_checkpoint_reads_normalisation(net: DABNet, tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save(
        {
            "model": net.state_dict(),
            "num_classes": 11,
            "model_config": net.config.to_dict(),
            "dataset": "camvid",
            "mean": [1.0, 2.0, 3.0],
            "std": [4.0, 5.0, 6.0],
            "epoch": 2,
        },
        path,
    )
    pred = Predictor.from_checkpoint(path, device="cpu")
    assert pred.mean == (1.0, 2.0, 3.0) and pred.std == (4.0, 5.0, 6.0)
    assert pred.info is CAMVID and pred.checkpoint["epoch"] == 2 and "model" not in pred.checkpoint
    image = _images(1, 32, 48)[0]
    direct = Predictor(net, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), device="cpu").predict(image)
    assert np.array_equal(pred.predict(image), direct)


def test_predict_folder_writes_three_kinds(net: DABNet, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    images = _images(2, 40, 56, seed=3)
    cv2.imwrite(str(src / "a.png"), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(src / "sub" / "b.png"), cv2.cvtColor(images[1], cv2.COLOR_RGB2BGR))
    (src / "notes.txt").write_text("not an image")
    pred = Predictor(net, CAMVID.official_mean, device="cpu")
    out = tmp_path / "out"
    written = predict_folder(pred, src, out, info=CAMVID, progress=False)
    assert {k: sorted(p.name for p in v) for k, v in written.items()} == {
        "label": ["a.png", "b.png"],
        "color": ["a.png", "b.png"],
        "overlay": ["a.png", "b.png"],
    }
    for name, image in zip(("a", "b"), images, strict=True):
        label = cv2.imread(str(out / "label" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == (40, 56) and label.dtype == np.uint8
        assert np.array_equal(label, pred.predict(image))
        color = cv2.cvtColor(cv2.imread(str(out / "color" / f"{name}.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(color, colorize(label.astype(np.int64), CAMVID.palette, CAMVID.ignore_index))
        over = cv2.imread(str(out / "overlay" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert over.shape == (40, 56, 3)
    assert not list(out.rglob("*.tmp"))

    only = predict_folder(pred, src, tmp_path / "only", info=CAMVID, write=("label",), progress=False)
    assert list(only) == ["label"] and not (tmp_path / "only" / "color").exists()


def test_predict_split_of_a_dataset(camvid_tiny: Path, tmp_path: Path) -> None:
    ds = build_dataset("camvid", camvid_tiny, "test")
    ds.samples = ds.samples[:2]
    pairs = [ds.load(i) for i in range(2)]
    pred = Predictor(Oracle(pairs, CAMVID.official_mean, 11), CAMVID.official_mean, device="cpu")
    written = predict_folder(pred, ds, tmp_path, write=("label", "color"), progress=False)
    assert [p.stem for p in written["label"]] == [ds.name(0), ds.name(1)]
    for path, (_, gt) in zip(written["label"], pairs, strict=True):
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        valid = gt != CAMVID.ignore_index
        assert label.shape == (360, 480) and np.array_equal(label[valid], gt[valid])


def test_corrupt_input_stops_with_its_name(net: DABNet, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = _images(1, 32, 32)[0]
    cv2.imwrite(str(src / "a_good.png"), good)
    data = cv2.imencode(".png", _images(1, 64, 64, seed=1)[0])[1].tobytes()
    (src / "b_truncated.png").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"b_truncated\.png") as err:
        predict_folder(Predictor(net, CAMVID.official_mean, device="cpu"), src, out, info=CAMVID, progress=False)
    assert "1 of 2" in str(err.value)
    assert sorted(p.name for p in (out / "label").iterdir()) == ["a_good.png"]
    assert not [p for p in out.rglob("*") if p.is_file() and p.name != "a_good.png"]
    with pytest.raises(DatasetError, match="does not exist"):
        predict_folder(Predictor(net, CAMVID.official_mean, device="cpu"), tmp_path / "missing", out, info=CAMVID)


def test_label_lut_matches_official_table() -> None:
    from cityscapesscripts.helpers.labels import trainId2label

    lut = cityscapes_label_lut()
    assert lut[0] == 7 and lut[13] == 26 and lut[18] == 33
    assert all(lut[t] == trainId2label[t].id for t in range(19))


@pytest.mark.parametrize(("train_id", "label_id"), [(0, 7), (13, 26)])
def test_cityscapes_export_constant(cityscapes_root: Path, tmp_path: Path, train_id: int, label_id: int) -> None:
    ds = build_dataset("cityscapes", cityscapes_root, "test")  # the split a submission is made of
    pred = Predictor(Constant(train_id, 19), CITYSCAPES.official_mean, device="cpu")
    paths = export_cityscapes(pred, ds, tmp_path, progress=False)
    stems = [ds.name(i) for i in range(len(ds))]
    assert sorted(p.name for p in paths) == sorted(f"{s}.png" for s in stems)
    assert all(s.endswith("_leftImg8bit") for s in stems)
    for i, path in enumerate(paths):
        out = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert out.dtype == np.uint8 and out.ndim == 2
        assert out.shape == ds.load(i)[0].shape[:2]
        assert (out == label_id).all()


def test_cityscapes_export_oracle_round_trips_label_ids(cityscapes_root: Path, tmp_path: Path) -> None:
    ds = build_dataset("cityscapes", cityscapes_root, "train")  # labelled, two cities
    pairs = [ds.load(i) for i in range(len(ds))]
    pred = Predictor(Oracle(pairs, CITYSCAPES.official_mean, 19), CITYSCAPES.official_mean, device="cpu")
    paths = export_cityscapes(pred, ds, tmp_path, progress=False)
    for (image_path, label_path), path, (_, train) in zip(ds.samples, paths, pairs, strict=True):
        raw_ids = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        out = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        valid = train != CITYSCAPES.ignore_index
        assert valid.any()
        assert np.array_equal(out[valid], raw_ids[valid])
        assert path.name == image_path.name
        assert out[0, 0] == 7 and out[0, 1] == 26  # road, car (fixture's known pixels)


def test_cityscapes_export_refuses_other_models(net: DABNet, cityscapes_root: Path, tmp_path: Path) -> None:
    ds = build_dataset("cityscapes", cityscapes_root, "val")
    with pytest.raises(DatasetError, match="19-class"):
        export_cityscapes(Predictor(net, CAMVID.official_mean, device="cpu"), ds, tmp_path, progress=False)
    src = tmp_path / "odd"
    src.mkdir()
    cv2.imwrite(str(src / "holiday.png"), _images(1, 32, 32)[0])
    with pytest.raises(DatasetError, match="holiday"):
        export_cityscapes(
            Predictor(Constant(0, 19), CITYSCAPES.official_mean, device="cpu"), src, tmp_path / "o", progress=False
        )
