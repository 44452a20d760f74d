"""ConfusionMatrix: a hand-computed example, input types, merge, the vectorised path, errors, DDP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dabnet_lib.errors import DabnetError, DatasetError
from dabnet_lib.training.metrics import ConfusionMatrix, MetricInputError

IGNORE = 255

# 5 classes. Class 3 is predicted once (wrong) and never in the ground truth: IoU 0, which
# `miou` counts and `official_miou` drops. Class 4 is predicted only on an ignored pixel: IoU NaN.
TARGET = np.array(
    [
        [0, 0, 1, 1],
        [0, 2, 2, IGNORE],
        [1, 1, IGNORE, IGNORE],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 2, 0, 4],
        [1, 3, 0, 2],
    ],
    dtype=np.int64,
)
# Worked out by hand, pixel by pixel (rows = ground truth, columns = prediction), 9 scored pixels.
EXPECTED_CONFUSION = np.array(
    [
        [2, 1, 0, 0, 0],
        [0, 3, 0, 1, 0],
        [1, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)
# IoU = TP / (GT + PRED - TP): 2/(3+3-2), 3/(4+4-3), 1/(2+1-1), 0/(0+1-0), absent.
EXPECTED_IOU = np.array([0.5, 0.6, 0.5, 0.0, np.nan])
EXPECTED_MIOU = (0.5 + 0.6 + 0.5 + 0.0) / 4  # 0.4
EXPECTED_OFFICIAL_MIOU = (0.5 + 0.6 + 0.5) / 3  # 0.5333...: classes with TP > 0 only
EXPECTED_PIXEL_ACC = 6 / 9
EXPECTED_CLASS_ACC = np.array([2 / 3, 3 / 4, 1 / 2, np.nan, np.nan])
EXPECTED_MEAN_ACC = (2 / 3 + 3 / 4 + 1 / 2) / 3


def _check_hand_example(res: dict) -> None:
    np.testing.assert_array_equal(res["confusion"], EXPECTED_CONFUSION)
    np.testing.assert_allclose(res["iou"], EXPECTED_IOU, equal_nan=True)
    assert res["miou"] == pytest.approx(EXPECTED_MIOU)
    assert res["official_miou"] == pytest.approx(EXPECTED_OFFICIAL_MIOU)
    assert res["official_miou"] > res["miou"]
    assert res["pixel_accuracy"] == pytest.approx(EXPECTED_PIXEL_ACC)
    np.testing.assert_allclose(res["class_accuracy"], EXPECTED_CLASS_ACC, equal_nan=True)
    assert res["mean_accuracy"] == pytest.approx(EXPECTED_MEAN_ACC)
    assert res["num_pixels"] == 9


def test_hand_computed_example_numpy():
    cm = ConfusionMatrix(5, IGNORE)
    cm.update(PRED, TARGET)
    res = cm.compute()
    _check_hand_example(res)
    assert cm.matrix.dtype == torch.int64 and tuple(cm.matrix.shape) == (5, 5)
    assert res["confusion"].dtype == np.int64


def test_torch_and_numpy_inputs_agree_for_any_shape_and_dtype():
    variants = [
        (PRED, TARGET),
        (torch.from_numpy(PRED), torch.from_numpy(TARGET.astype(np.int64))),
        (torch.from_numpy(PRED).to(torch.int32), torch.from_numpy(TARGET)),  # uint8 tensor target
        (PRED.astype(np.uint8), TARGET.astype(np.int32)),
        (PRED.reshape(1, 3, 4), TARGET.reshape(1, 3, 4)),  # batch (N, H, W)
        (PRED.reshape(-1), TARGET.reshape(-1)),  # flat
        (torch.from_numpy(PRED.T.copy()).T, torch.from_numpy(TARGET.T.copy()).T),  # non-contiguous
        (np.asfortranarray(PRED), TARGET),
    ]
    for pred, target in variants:
        cm = ConfusionMatrix(5, IGNORE)
        cm.update(pred, target)
        _check_hand_example(cm.compute())


def test_read_only_numpy_is_accepted_without_warning():
    pred, target = PRED.copy(), TARGET.copy()
    pred.setflags(write=False)
    target.setflags(write=False)
    cm = ConfusionMatrix(5, IGNORE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm.update(pred, target)
    _check_hand_example(cm.compute())


def test_merge_and_repeated_updates_sum():
    top, bottom = ConfusionMatrix(5, IGNORE), ConfusionMatrix(5, IGNORE)
    top.update(PRED[:1], TARGET[:1])
    bottom.update(PRED[1:], TARGET[1:])
    assert top.merge(bottom) is top
    _check_hand_example(top.compute())

    twice = ConfusionMatrix(5, IGNORE)
    twice.update(PRED, TARGET)
    twice.update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    np.testing.assert_array_equal(twice.compute()["confusion"], 2 * EXPECTED_CONFUSION)
    # Doubling every count leaves every ratio unchanged.
    assert twice.compute()["miou"] == pytest.approx(EXPECTED_MIOU)


def test_merge_rejects_other_settings():
    with pytest.raises(MetricInputError, match="num_classes=4"):
        ConfusionMatrix(5, IGNORE).merge(ConfusionMatrix(4, IGNORE))
    with pytest.raises(MetricInputError, match="ignore_index=11"):
        ConfusionMatrix(5, IGNORE).merge(ConfusionMatrix(5, 11))


def _loop_reference(pred: np.ndarray, target: np.ndarray, c: int, ignore: int) -> np.ndarray:
    """Slow, obviously right: one pixel at a time."""
    out = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist(), strict=True):
        if t != ignore:
            out[t, p] += 1
    return out


def _random_pair(rng: np.random.Generator, shape: tuple[int, ...], c: int, ignore: int):
    target = rng.integers(0, c, size=shape)
    target[rng.random(shape) < 0.2] = ignore
    pred = rng.integers(0, c, size=shape)
    return pred, target


def test_vectorised_counts_match_pixel_loop_on_small_input():
    rng = np.random.default_rng(0)
    pred, target = _random_pair(rng, (3, 17, 19), 7, 255)
    cm = ConfusionMatrix(7, 255)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_array_equal(cm.compute()["confusion"], _loop_reference(pred, target, 7, 255))


def test_large_random_input_matches_independent_numpy_count():
    rng = np.random.default_rng(1)
    c, ignore = 19, 255
    cm = ConfusionMatrix(c, ignore)
    reference = np.zeros((c, c), dtype=np.int64)
    for _ in range(3):
        pred, target = _random_pair(rng, (2, 256, 512), c, ignore)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        keep = target != ignore
        np.add.at(reference, (target[keep], pred[keep]), 1)
    res = cm.compute()
    np.testing.assert_array_equal(res["confusion"], reference)
    assert res["num_pixels"] == int(reference.sum())
    # IoU from the reference, written out independently.
    tp = np.diag(reference)
    iou = tp / (reference.sum(0) + reference.sum(1) - tp)
    np.testing.assert_allclose(res["iou"], iou)
    assert res["miou"] == pytest.approx(iou.mean())


@pytest.mark.parametrize(("classes", "ignore"), [(11, 11), (19, 255), (5, 3), (4, None)])
def test_unchecked_update_counts_as_update_does(classes: int, ignore: int | None) -> None:
    """The evaluation loop's fast path, mixed with checked updates, gives update's matrix; an ignore index
    inside the class range (or none) takes the checked path."""
    gen = torch.Generator().manual_seed(classes)
    fast, reference = ConfusionMatrix(classes, ignore), ConfusionMatrix(classes, ignore)
    for i in range(4):
        pred = torch.randint(0, classes, (2, 17, 23), generator=gen)
        target = torch.randint(0, classes, (2, 17, 23), generator=gen)
        if ignore is not None:
            target[torch.rand(target.shape, generator=gen) < 0.2] = ignore
        (fast.update if i == 2 else fast.update_unchecked)(pred, target)
        reference.update(pred, target)
    assert torch.equal(fast.matrix, reference.matrix) and fast.matrix.shape == (classes, classes)
    np.testing.assert_array_equal(fast.compute()["confusion"], reference.compute()["confusion"])
    fast.reset()
    assert int(fast.matrix.sum()) == 0


def test_unchecked_update_reports_stray_labels() -> None:
    between = ConfusionMatrix(19, 255)
    between.update_unchecked(torch.zeros(1, 4, 4, dtype=torch.int64), torch.full((1, 4, 4), 40))
    with pytest.raises(DatasetError, match=r"label values \[40\] are neither classes \(0..18\) nor the ignore"):
        between.compute()
    above = ConfusionMatrix(19, 255)
    with pytest.raises(DatasetError, match="label value 300 is neither a class"):
        above.update_unchecked(torch.zeros(1, 2, 2, dtype=torch.int64), torch.full((1, 2, 2), 300))


def test_from_counts_holds_the_counts() -> None:
    counts = EXPECTED_CONFUSION.astype(np.int64)
    cm = ConfusionMatrix.from_counts(counts, IGNORE)
    assert (cm.num_classes, cm.ignore_index) == (5, IGNORE)
    _check_hand_example(cm.all_reduce().compute())
    with pytest.raises(MetricInputError, match=r"must be \(C, C\), got \(5, 4\)"):
        ConfusionMatrix.from_counts(counts[:, :4], IGNORE)


def test_official_miou_never_below_miou():
    rng = np.random.default_rng(2)
    for _ in range(20):
        pred, target = _random_pair(rng, (12, 12), 6, 255)
        pred[pred == 5] = 4  # class 5 never predicted: IoU 0 where it is in the ground truth
        cm = ConfusionMatrix(6, 255)
        cm.update(pred, target)
        res = cm.compute()
        assert res["official_miou"] >= res["miou"] - 1e-12
        assert 0.0 <= res["miou"] <= 1.0 and 0.0 <= res["pixel_accuracy"] <= 1.0


def test_ignore_index_inside_class_range_and_none():
    # CamVid style: ignore index 11 = C; and ignore None scores every pixel.
    target = np.array([[0, 11], [1, 1]])
    pred = np.array([[0, 0], [1, 0]])
    cm = ConfusionMatrix(11, 11)
    cm.update(pred, target)
    assert cm.compute()["num_pixels"] == 3
    every = ConfusionMatrix(2, None)
    every.update(np.array([0, 1, 1]), np.array([0, 0, 1]))
    np.testing.assert_array_equal(every.compute()["confusion"], [[1, 1], [0, 1]])


def test_prediction_out_of_range_is_a_clear_error():
    cm = ConfusionMatrix(5, IGNORE)
    bad = PRED.copy()
    bad[0, 0] = 7
    with pytest.raises(MetricInputError, match=r"prediction values \[7\] are outside \[0, 5\)"):
        cm.update(bad, TARGET)
    bad[0, 0] = -1
    with pytest.raises(DabnetError, match=r"prediction values \[-1\]"):
        cm.update(torch.from_numpy(bad), torch.from_numpy(TARGET))
    # A bad prediction on an ignored pixel is not scored, hence not an error.
    ok = PRED.copy()
    ok[1, 3] = 99
    cm.update(ok, TARGET)
    assert cm.compute()["num_pixels"] == 9  # only the successful update counted


def test_target_out_of_range_and_shape_and_dtype_errors():
    cm = ConfusionMatrix(5, IGNORE)
    target = TARGET.copy()
    target[0, 0] = 9
    with pytest.raises(MetricInputError, match=r"target values \[9\].*ignore index 255"):
        cm.update(PRED, target)
    with pytest.raises(MetricInputError, match=r"pred shape \(2, 4\) != target shape \(3, 4\)"):
        cm.update(PRED[:2], TARGET)
    with pytest.raises(MetricInputError, match="argmax"):
        cm.update(torch.zeros(1, 5, 3, 4), torch.from_numpy(TARGET).unsqueeze(0))
    assert int(cm.matrix.sum()) == 0


def test_reset_and_empty_compute():
    cm = ConfusionMatrix(5, IGNORE)
    cm.update(PRED, TARGET)
    cm.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cm.compute()
    assert res["num_pixels"] == 0
    assert np.isnan(res["iou"]).all()
    assert np.isnan(res["miou"]) and np.isnan(res["official_miou"]) and np.isnan(res["pixel_accuracy"])


def test_all_reduce_without_process_group_is_a_noop():
    cm = ConfusionMatrix(5, IGNORE)
    cm.update(PRED, TARGET)
    assert cm.all_reduce() is cm
    np.testing.assert_array_equal(cm.compute()["confusion"], EXPECTED_CONFUSION)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(5, IGNORE)
        # Rank r scores row r of the example only.
        cm.update(PRED[rank : rank + 1], TARGET[rank : rank + 1])
        cm.all_reduce()
        np.save(f"{out_dir}/rank{rank}.npy", cm.compute()["confusion"])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    world = 3  # one image row per rank
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), EXPECTED_CONFUSION)
