"""dabnet_lib.data.transforms: shapes, integer labels, image/label alignment, padding, reproducibility."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dabnet_lib.data.datasets import CAMVID, CamVid
from dabnet_lib.data.transforms import (
    PAPER_SCALES,
    EvalTransform,
    TrainTransform,
    denormalize,
    jitter_colors,
    normalize,
)

IGNORE = CAMVID.ignore_index
MEAN = (10.0, 10.0, 10.0)


def coded_pair(height: int = 96, width: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A blocky label (8x8-pixel cells of classes 0..10, some void) and an image whose red channel encodes
    it (20 * class + 30, so never equal to the mean-colour padding) and whose green channel encodes the
    column, so a mirror or shift applied to one and not the other shows up."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 12, size=(height // 8, width // 8)).astype(np.uint8)
    label = np.kron(cells, np.ones((8, 8), dtype=np.uint8))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = label * 20 + 30
    image[..., 1] = np.linspace(0, 255, width).astype(np.uint8)[None, :]
    image[..., 2] = 77
    return image, label


def decode(out_image: torch.Tensor) -> np.ndarray:
    """Class encoded in the red channel of a transformed image (MEAN subtracted); -1 where padded."""
    red = out_image[0].numpy() + MEAN[0]
    return np.where(out_image[0].numpy() == 0, -1, np.rint((red - 30) / 20)).astype(np.int64)


def make(crop=(64, 64), scales=(1.0,), seed=0, **kw) -> TrainTransform:
    return TrainTransform(crop, scales=scales, mean=MEAN, ignore_index=IGNORE, rng=np.random.default_rng(seed), **kw)


def test_output_types_and_shapes() -> None:
    image, label = coded_pair()
    for crop in [(64, 64), (200, 150), (96, 128)]:
        out_image, out_label = make(crop, scales=PAPER_SCALES)(image, label)
        assert out_image.dtype == torch.float32 and tuple(out_image.shape) == (3, *crop)
        assert out_label.dtype == torch.int64 and tuple(out_label.shape) == crop
        assert out_image.is_contiguous() and out_label.is_contiguous()


def test_exact_alignment_at_scale_one_with_mirror_and_crop() -> None:
    image, label = coded_pair()
    transform = make((48, 80), scales=(1.0,), seed=3)
    flips = set()
    for _ in range(12):
        out_image, out_label = transform(image, label)
        np.testing.assert_array_equal(decode(out_image), out_label.numpy())
        # the crop is a window of the original (mirrored or not)
        green = out_image[1].numpy() + MEAN[1]
        flips.add(bool(green[0, 0] > green[0, -1]))
    assert flips == {True, False}  # both orientations happened, and alignment held in both


@pytest.mark.parametrize("scale", [0.75, 1.25, 2.0])
def test_alignment_after_scaling(scale: float) -> None:
    image, label = coded_pair()
    transform = make((80, 100), scales=(scale,), seed=1)
    for _ in range(4):
        out_image, out_label = transform(image, label)
        decoded, target = decode(out_image), out_label.numpy()
        # padding is the same rectangle in image (mean colour -> 0) and label (ignore index)
        padded = decoded == -1
        assert np.all(target[padded] == IGNORE)
        if scale == 0.75:  # 72x96 image in an 80x100 crop
            assert padded.sum() == 80 * 100 - 72 * 96
        # away from cell edges (label constant over 3x3) the class encoded in the image equals the label
        kernel = np.ones((3, 3), np.uint8)
        as_u8 = target.astype(np.uint8)
        interior = (cv2.dilate(as_u8, kernel) == cv2.erode(as_u8, kernel)) & ~padded
        interior[[0, -1], :] = interior[:, [0, -1]] = False  # the crop edge hides neighbours
        assert interior.mean() > 0.3
        np.testing.assert_array_equal(decoded[interior], target[interior])
        # labels stay integer and only hold values that were there (+ ignore)
        assert set(np.unique(target).tolist()) <= set(np.unique(label).tolist()) | {IGNORE}


def test_padding_uses_ignore_and_mean_colour() -> None:
    image, label = coded_pair(32, 40)
    out_image, out_label = make((64, 64), scales=(1.0,), mirror=False)(image, label)
    # image is placed at the top-left, padding at the bottom/right
    np.testing.assert_array_equal(out_label[:32, :40].numpy(), label)
    assert torch.all(out_label[32:] == IGNORE) and torch.all(out_label[:, 40:] == IGNORE)
    assert torch.all(out_image[:, 32:] == 0) and torch.all(out_image[:, :, 40:] == 0)
    np.testing.assert_allclose(
        out_image[:, :32, :40].numpy(), image.transpose(2, 0, 1).astype(np.float32) - np.array(MEAN)[:, None, None]
    )


def test_color_jitter_changes_colours_only_and_draws_after_the_geometry() -> None:
    # The engine seeds every sample's generator by (seed, epoch, index), so drawing the jitter after scale,
    # crop and mirror keeps every sample's geometry the same as without jitter.
    image, label = coded_pair(32, 40)  # at scales <= 1.5 a 64x64 crop always holds padding
    for seed in range(6):
        image_a, label_a = make((64, 64), scales=(1.0, 1.5), seed=seed)(image, label)
        image_b, label_b = make((64, 64), scales=(1.0, 1.5), seed=seed, color_jitter=0.3)(image, label)
        assert torch.equal(label_a, label_b)
        padding = (label_b == IGNORE) & (image_a[0] == 0)
        assert padding.any() and torch.all(image_b[:, padding] == 0)  # padding keeps the mean colour
        pixels = image_b.numpy() + np.array(MEAN, np.float32)[:, None, None]
        assert pixels.min() >= -1e-4 and pixels.max() <= 255 + 1e-4
        assert not torch.allclose(image_a, image_b)
    with pytest.raises(ValueError, match="color_jitter"):
        make(color_jitter=1.0)


def rare_patch_pair(height: int = 192, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """coded_pair's encoding of a label that is class 0 except a 4x4 patch of class 5 and a void bottom band."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[60:64, 100:104] = 5
    label[-8:] = IGNORE
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = label * 20 + 30
    image[..., 1] = np.linspace(0, 255, width).astype(np.uint8)[None, :]
    return image, label


def test_class_crop_crops_a_rare_class_as_often_as_a_common_one() -> None:
    # Two classes: with class_crop=1 half the windows are drawn around the 4x4 patch and must hold it; a
    # uniform 32x32 window holds it in about 3% of draws. Image and label stay aligned either way.
    image, label = rare_patch_pair()
    draws = 400
    for class_crop, low, high in [(0.0, 0.0, 0.08), (1.0, 0.40, 0.60)]:
        transform = make((32, 32), scales=(1.0, 1.5), seed=2, class_crop=class_crop)
        holds = 0
        for _ in range(draws):
            out_image, out_label = transform(image, label)
            decoded, target = decode(out_image), out_label.numpy()
            as_u8, kernel = target.astype(np.uint8), np.ones((3, 3), np.uint8)
            interior = (cv2.dilate(as_u8, kernel) == cv2.erode(as_u8, kernel)) & (decoded != -1)
            interior[[0, -1], :] = interior[:, [0, -1]] = False  # away from class edges, where bilinear blends
            np.testing.assert_array_equal(decoded[interior], target[interior])
            holds += bool((target == 5).any())
        assert low <= holds / draws <= high, (class_crop, holds)


def test_class_crop_on_an_all_void_label_falls_back_to_a_uniform_window() -> None:
    image, label = rare_patch_pair()
    label[:] = IGNORE
    _, out_label = make((32, 32), class_crop=1.0)(image, label)
    assert tuple(out_label.shape) == (32, 32) and torch.all(out_label == IGNORE)
    with pytest.raises(ValueError, match="class_crop"):
        make(class_crop=1.5)


def test_max_class_ratio_redraws_windows_one_class_fills() -> None:
    # The label is class 0 except the patch: almost every 16x16 window is pure class 0 and gets redrawn, so
    # with ratio 0.99 the patch shows up far more often than in uniform windows (at most 10 draws each).
    image, label = rare_patch_pair()
    counts = {}
    for ratio in (1.0, 0.99):
        transform = make((16, 16), seed=4, max_class_ratio=ratio)
        counts[ratio] = sum(bool((transform(image, label)[1] == 5).any()) for _ in range(300))
    assert counts[1.0] < 15 and counts[0.99] > 3 * counts[1.0], counts
    with pytest.raises(ValueError, match="max_class_ratio"):
        make(max_class_ratio=0.0)


def test_jitter_colors_factors() -> None:
    rng = np.random.default_rng(0)
    window = rng.uniform(20, 120, size=(8, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(jitter_colors(window.copy(), 1.0, 1.0, 1.0), window, atol=1e-4)
    np.testing.assert_allclose(jitter_colors(window.copy(), 1.5, 1.0, 1.0), window * 1.5, rtol=1e-6)
    grey = jitter_colors(window.copy(), 1.0, 1.0, 0.0)  # saturation 0: every channel is the luma
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-3)
    np.testing.assert_allclose(grey[..., 0], window @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-3)
    flat = jitter_colors(window.copy(), 1.0, 0.0, 1.0)  # contrast 0: a uniform image at the mean luma
    np.testing.assert_allclose(flat, np.full_like(window, flat[0, 0, 0]), atol=1e-3)
    assert jitter_colors(np.full((2, 2, 3), 200.0, np.float32), 1.5, 1.0, 1.0).max() == 255.0  # clipped


def test_base_scale_resizes_like_cv2() -> None:
    image, label = coded_pair(96, 128)
    out_image, out_label = make((48, 64), scales=(1.0,), mirror=False, base_scale=0.5)(image, label)
    np.testing.assert_array_equal(out_label.numpy(), cv2.resize(label, (64, 48), interpolation=cv2.INTER_NEAREST_EXACT))
    expected = cv2.resize(image, (64, 48), interpolation=cv2.INTER_LINEAR).astype(np.float32) - np.array(
        MEAN, np.float32
    )
    np.testing.assert_allclose(out_image.numpy(), expected.transpose(2, 0, 1))


def test_reproducible_with_seed_and_torch_seed() -> None:
    image, label = coded_pair()
    runs = []
    for seed in (5, 5, 6):
        transform = make((64, 64), scales=PAPER_SCALES, seed=seed)
        runs.append([transform(image, label)[1] for _ in range(6)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))
    # rng=None: seeded from torch.initial_seed(), so torch.manual_seed reproduces a run
    streams = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        transform = TrainTransform((64, 64), mean=MEAN, ignore_index=IGNORE)
        streams.append([transform(image, label)[1] for _ in range(6)])
    assert all(torch.equal(a, b) for a, b in zip(streams[0], streams[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(streams[0], streams[2], strict=True))


def test_rejects_missing_mean_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="needs mean= and ignore_index="):
        TrainTransform((64, 64))
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform((0, 64), mean=MEAN, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="sizes differ"):
        make()(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), np.uint8))


def test_eval_transform_and_normalize_roundtrip() -> None:
    image, label = coded_pair(96, 128)
    out_image, out_label = EvalTransform(MEAN)(image, label)
    np.testing.assert_allclose(out_image.numpy(), image.transpose(2, 0, 1) - np.array(MEAN)[:, None, None])
    assert out_label.dtype == torch.int64 and torch.equal(out_label, torch.from_numpy(label.astype(np.int64)))
    half_image, full_label = EvalTransform(MEAN, scale=0.5)(image, label)
    assert tuple(half_image.shape) == (3, 48, 64) and tuple(full_label.shape) == (96, 128)
    std = (50.0, 60.0, 70.0)
    tensor = normalize(image, MEAN, std)
    np.testing.assert_allclose(tensor[2].numpy(), (image[..., 2] - MEAN[2]) / std[2], rtol=1e-6)
    np.testing.assert_array_equal(denormalize(tensor, MEAN, std), image)


def test_real_camvid_sample(camvid_root: Path) -> None:
    ds = CamVid(
        camvid_root, "val", transform=TrainTransform.for_dataset(CAMVID, (256, 256), rng=np.random.default_rng(0))
    )
    for i in (0, 50):
        out_image, out_label = ds[i]
        assert tuple(out_image.shape) == (3, 256, 256) and tuple(out_label.shape) == (256, 256)
        assert out_label.dtype == torch.int64 and int(out_label.min()) >= 0 and int(out_label.max()) <= 11
        assert float(out_image.abs().max()) <= 255.0
