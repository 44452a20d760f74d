"""dabnet_lib.evaluation.evaluation: oracle scores, full-resolution counts, batching, checkpoints, best-of-last."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dabnet_lib.data.datasets import SegmentationDataset, build_dataset
from dabnet_lib.errors import CheckpointError, DatasetError
from dabnet_lib.evaluation.evaluation import best_of_last, evaluate_checkpoint, format_result, result_to_json
from dabnet_lib.model.dabnet import DABNet, DABNetConfig
from dabnet_lib.training.validation import evaluate

N_IMAGES = 3


@pytest.fixture(scope="module")
def camvid_test(camvid_tiny: Path) -> SegmentationDataset:
    return build_dataset("camvid", camvid_tiny, "test")


@pytest.fixture(scope="module")
def labels(camvid_test: SegmentationDataset) -> list[np.ndarray]:
    return [np.asarray(camvid_test.load(i)[1], dtype=np.int64) for i in range(N_IMAGES)]


class Oracle(nn.Module):
    """Logits = one-hot of the ground truth of the stored image closest to the (de-normalised) input."""

    def __init__(self, dataset: SegmentationDataset, count: int, mean: tuple[float, ...]) -> None:
        super().__init__()
        pairs = [dataset.load(i) for i in range(count)]
        self.images = [torch.from_numpy(im.astype(np.float32)).permute(2, 0, 1) for im, _ in pairs]
        self.labels = [torch.from_numpy(np.asarray(lb, dtype=np.int64)) for _, lb in pairs]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.num_classes = dataset.info.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for item in x:
            raw = item + self.mean
            size = raw.shape[-2:]
            diffs = [
                (nn.functional.interpolate(im[None], size, mode="bilinear")[0] - raw).abs().mean() for im in self.images
            ]
            label = self.labels[int(torch.stack(diffs).argmin())]
            hot = nn.functional.one_hot(label.clamp(max=self.num_classes - 1), self.num_classes)
            out.append(hot.permute(2, 0, 1).float())
        return torch.stack(out)


class Probe(nn.Module):
    """Records its input; predicts class 0 everywhere."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])


def constant_dabnet(cls: int, num_classes: int = 11) -> DABNet:
    """A real DABNet whose output is class ``cls`` everywhere: constant classifier input of ones."""
    model = DABNet(num_classes)
    with torch.no_grad():
        model.bn_prelu_3.bn.weight.zero_()
        model.bn_prelu_3.bn.bias.fill_(1.0)
        w = model.classifier[0].conv.weight
        w.zero_()
        w[cls] = 1.0
    return model.eval()


def save_checkpoint(path: Path, model: DABNet, **extra: object) -> Path:
    ckpt = {
        "model": model.state_dict(),
        "num_classes": model.num_classes,
        "model_config": model.config.to_dict(),
        "dataset": "camvid",
        "mean": [99.63, 103.33, 105.66],
        "std": None,
        "epoch": 1,
    }
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


def constant_scores(cls: int, labels: list[np.ndarray], num_classes: int, ignore: int) -> tuple[float, float]:
    """(mIoU, pixel accuracy) of predicting ``cls`` everywhere, straight from the labels."""
    valid = np.concatenate([lb[lb != ignore] for lb in labels])
    present = set(np.unique(valid).tolist()) | {cls}
    iou_c = float((valid == cls).sum()) / valid.size
    return iou_c / len(present), iou_c


def test_oracle_scores_one(camvid_test: SegmentationDataset, labels: list[np.ndarray]) -> None:
    info = camvid_test.info
    oracle = Oracle(camvid_test, N_IMAGES, info.official_mean)
    res = evaluate(oracle, camvid_test, device="cpu", progress=False, limit=N_IMAGES)
    assert res["miou"] == 1.0 and res["official_miou"] == 1.0
    assert res["pixel_accuracy"] == 1.0 and res["mean_accuracy"] == 1.0
    conf = np.asarray(res["confusion"])
    valid = sum(int((lb != info.ignore_index).sum()) for lb in labels)
    assert conf.sum() == np.trace(conf) == valid
    assert res["images"] == N_IMAGES and res["split"] == "test"
    assert list(res["iou_by_class"]) == list(info.classes)
    present = set(np.unique(np.concatenate([lb.ravel() for lb in labels])).tolist()) - {info.ignore_index}
    for k, name in enumerate(info.classes):
        assert (res["iou_by_class"][name] == 1.0) if k in present else math.isnan(res["iou_by_class"][name])


def test_batch_two_equals_batch_one(camvid_test: SegmentationDataset) -> None:
    oracle = Oracle(camvid_test, N_IMAGES, camvid_test.info.official_mean)
    one = evaluate(oracle, camvid_test, device="cpu", progress=False, limit=N_IMAGES, batch_size=1)
    two = evaluate(oracle, camvid_test, device="cpu", progress=False, limit=N_IMAGES, batch_size=2)
    assert np.array_equal(one["confusion"], two["confusion"]) and two["images"] == N_IMAGES

    torch.manual_seed(0)
    net = DABNet(11).eval()
    a = evaluate(net, camvid_test, device="cpu", progress=False, limit=2, batch_size=1, scale=0.5)
    b = evaluate(net, camvid_test, device="cpu", progress=False, limit=2, batch_size=2, scale=0.5)
    ca, cb = np.asarray(a["confusion"]), np.asarray(b["confusion"])
    assert ca.sum() == cb.sum()
    # float reordering in a batched conv may flip an argmax tie on a handful of pixels, no more
    assert np.abs(ca - cb).sum() <= 1e-4 * ca.sum()


def test_random_dabnet_half_scale_counts_full_resolution(
    camvid_test: SegmentationDataset, labels: list[np.ndarray]
) -> None:
    torch.manual_seed(1)
    net = DABNet(11, DABNetConfig())
    net.train()
    res = evaluate(net, camvid_test, device="cpu", progress=False, limit=2, scale=0.5)
    info = camvid_test.info
    conf = np.asarray(res["confusion"])
    assert conf.shape == (info.num_classes, info.num_classes)
    assert conf.sum() == sum(int((lb != info.ignore_index).sum()) for lb in labels[:2])
    for key in ("miou", "official_miou", "pixel_accuracy", "mean_accuracy"):
        assert math.isfinite(res[key]) and 0.0 <= res[key] <= 1.0
    assert res["official_miou"] >= res["miou"]
    assert 0.0 < res["metric_seconds"] < res["seconds"] and 0.0 < res["metric_share"] < 1.0
    assert res["scale"] == 0.5 and res["images"] == 2
    assert net.training, "evaluate must restore the model's train mode"
    payload = result_to_json(res)
    assert set(payload["iou"]) == set(info.classes) and isinstance(payload["confusion"], list)
    text = format_result(res)
    assert "Bicyclist" in text and "metric updates" in text


def test_normalisation_source_is_applied(camvid_test: SegmentationDataset) -> None:
    image, _ = camvid_test.load(0)
    probe = Probe(11)
    evaluate(probe, camvid_test, device="cpu", progress=False, limit=1)
    default = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) - torch.tensor(
        camvid_test.info.official_mean
    ).view(3, 1, 1)
    assert torch.allclose(probe.seen[0][0], default, atol=1e-3)

    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    probe = Probe(11)
    res = evaluate(probe, camvid_test, device="cpu", progress=False, limit=1, mean=mean, std=std)
    expected = (
        torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) - torch.tensor(mean).view(3, 1, 1)
    ) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(probe.seen[0][0], expected, atol=1e-3)
    assert res["mean"] == list(mean) and res["std"] == list(std)


def test_evaluate_checkpoint_uses_checkpoint_normalisation(
    camvid_test: SegmentationDataset, camvid_tiny: Path, tmp_path: Path, labels: list[np.ndarray]
) -> None:
    path = save_checkpoint(tmp_path / "road.pt", constant_dabnet(3), mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0], epoch=7)
    res = evaluate_checkpoint(path, camvid_tiny, "test", device="cpu", progress=False, limit=2, scale=0.5)
    assert res["checkpoint"] == str(path) and res["epoch"] == 7 and res["normalization"] == "checkpoint"
    assert res["mean"] == [1.0, 2.0, 3.0] and res["std"] == [4.0, 5.0, 6.0]
    info = camvid_test.info
    miou, acc = constant_scores(3, labels[:2], info.num_classes, info.ignore_index)
    assert res["miou"] == pytest.approx(miou) and res["pixel_accuracy"] == pytest.approx(acc)

    official = tmp_path / "official.pth"  # the release's format: no dataset, no mean
    torch.save({"epoch": 3, "model": constant_dabnet(3).state_dict()}, official)
    res = evaluate_checkpoint(official, camvid_tiny, "test", device="cpu", progress=False, limit=1, scale=0.5)
    assert res["dataset"] == "camvid" and "official" in res["normalization"]
    assert res["mean"] == list(info.official_mean) and res["std"] is None


def test_checkpoint_class_count_mismatch(camvid_tiny: Path, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c19.pt", DABNet(19))  # says camvid, has 19 classes
    with pytest.raises(CheckpointError, match="19 classes"):
        evaluate_checkpoint(path, camvid_tiny, "test", device="cpu", progress=False, limit=1)
    with pytest.raises(CheckpointError, match="19 classes"):
        evaluate_checkpoint(tmp_path / "c19.pt", camvid_tiny, "test", dataset="camvid", device="cpu", progress=False)


@pytest.mark.slow
def test_best_of_last_picks_best_of_last_k(
    camvid_test: SegmentationDataset, camvid_tiny: Path, tmp_path: Path, labels: list[np.ndarray]
) -> None:
    info = camvid_test.info
    per_epoch = {1: 3, 2: 0, 3: 3, 4: 9, 5: 1}  # epoch -> constant class; epoch 1 is outside the last 4
    for epoch, cls in per_epoch.items():
        save_checkpoint(tmp_path / f"epoch_{epoch:04d}.pt", constant_dabnet(cls), epoch=epoch)
    save_checkpoint(tmp_path / "last.pt", constant_dabnet(3), epoch=5)
    res = best_of_last(tmp_path, 4, "test", data_root=camvid_tiny, device="cpu", progress=False, limit=2, scale=0.5)
    assert [c["epoch"] for c in res["candidates"]] == [2, 3, 4, 5]
    expected = {
        e: constant_scores(per_epoch[e], labels[:2], info.num_classes, info.ignore_index)[0] for e in (2, 3, 4, 5)
    }
    for cand in res["candidates"]:
        assert cand["miou"] == pytest.approx(expected[cand["epoch"]])
    best = max(expected, key=expected.get)
    assert res["best_epoch"] == best and res["epoch"] == best
    assert res["checkpoint"] == str(tmp_path / f"epoch_{best:04d}.pt")
    assert res["miou"] == pytest.approx(expected[best])
    note = res["selection_note"]
    assert "'test'" in note and "selected" in note and "optimistic" in note
    assert "NOTE:" in format_result(res)


def test_best_of_last_without_epoch_files(tmp_path: Path, camvid_tiny: Path) -> None:
    with pytest.raises(CheckpointError, match="epoch_XXXX"):
        best_of_last(tmp_path, 3, data_root=camvid_tiny, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        best_of_last(tmp_path / "nope", 3, data_root=camvid_tiny, progress=False)


def test_cityscapes_oracle_and_withheld_test_labels(cityscapes_root: Path) -> None:
    train = build_dataset("cityscapes", cityscapes_root, "train")
    res = evaluate(
        Oracle(train, len(train), train.info.official_mean), train, device="cpu", progress=False, batch_size=2
    )
    assert res["miou"] == 1.0 and res["pixel_accuracy"] == 1.0 and res["images"] == len(train) == 3
    valid = sum(int((train.load(i)[1] != 255).sum()) for i in range(len(train)))
    assert np.asarray(res["confusion"]).sum() == valid
    test = build_dataset("cityscapes", cityscapes_root, "test")
    with pytest.raises(DatasetError, match="cityscapes-submission"):
        evaluate(Probe(19), test, device="cpu", progress=False)


@pytest.mark.usefixtures("one_thread")
def test_evaluate_leaves_an_nchw_training_model_as_it_found_it(camvid_test: SegmentationDataset) -> None:
    """Validation inside training must not switch the training model to channels_last (wrong bf16 gradients,
    DDP stride warnings, recompiles), nor leave it in eval mode, nor touch its weights or BN statistics."""
    torch.manual_seed(0)
    model = DABNet(11).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {n: p.stride() for n, p in model.named_parameters()}
    evaluate(model, camvid_test, device="cpu", progress=False, scale=0.25, limit=2)
    assert model.training
    assert {n: p.stride() for n, p in model.named_parameters()} == strides
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {p.device.type for p in model.parameters()} == {"cpu"}

    cl = DABNet(11).to(memory_format=torch.channels_last).eval()  # and a channels_last model stays so
    result = evaluate(cl, camvid_test, device="cpu", progress=False, scale=0.25, limit=2)
    conv = cl.init_conv[0].conv.weight
    assert not cl.training and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert result["images"] == 2
