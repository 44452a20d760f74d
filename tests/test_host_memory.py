"""Bounded host memory: the decode-once cache is used only when the split fits the RAM budget (shared by the
local DDP ranks), and the streamed path (decode per access) trains exactly the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest

import dabnet_lib.data.host_memory as host_memory
from dabnet_lib.data.datasets import build_dataset, subset
from dabnet_lib.data.host_memory import decoded_bytes, plan_caches
from dabnet_lib.errors import DabnetError
from dabnet_lib.training.engine import fit
from dabnet_lib.training.recipes import get_recipe

GB = 10**9


@pytest.fixture(autouse=True)
def _stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stats_cache"))


def test_decoded_size_estimate_is_exact_for_camvid(camvid_tiny: Path) -> None:
    ds = subset(build_dataset("camvid", camvid_tiny, "val"), 5)
    image, label = ds.load(0)
    assert decoded_bytes(ds) == 5 * (image.nbytes + label.nbytes) == 5 * 360 * 480 * 4


def test_the_cache_is_planned_against_the_budget(camvid_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = build_dataset("camvid", camvid_root, "train")  # 367 x 360 x 480 x 4 bytes = 0.254 GB decoded
    val = build_dataset("camvid", camvid_root, "val")  # 101 images: 0.070 GB
    need = decoded_bytes(train)
    assert need == 367 * 360 * 480 * 4

    def plan(fraction: float, ranks: int = 1, available: int | None = GB, datasets=(train,)):
        monkeypatch.setattr(host_memory, "available_bytes", lambda: available)  # the memory the machine reports
        return plan_caches(list(datasets), fraction, ranks)

    (fits,) = plan(0.5)
    assert fits.cache and fits.budget_bytes == GB // 2 and fits.need_bytes == need
    assert "decoded once into RAM" in fits.reason and "0.5 of 1.00 GB" in fits.reason
    (shared,) = plan(0.5, ranks=2)  # two local DDP ranks: 0.25 GB each, the split needs 0.254 GB
    assert not shared.cache and shared.budget_bytes == GB // 4
    assert "decoded per access" in shared.reason and "shared by 2 local processes" in shared.reason
    assert not plan(0.0)[0].cache and "cache_ram_fraction=0" in plan(0.0)[0].reason
    unknown = plan(0.5, available=None)[0]
    assert not unknown.cache and "unknown" in unknown.reason
    # the training split takes its share first; val gets what is left
    first, second = plan(0.3, datasets=(train, val, None))
    assert first.cache and not second.cache and second.budget_bytes == int(0.3 * GB) - need
    first, second = plan(0.35, datasets=(train, val))
    assert first.cache and second.cache
    assert plan(0.5)[0].apply() is train and train._cache is not None


def test_recipe_field_is_validated() -> None:
    recipe = get_recipe("cityscapes", "paper")
    assert recipe.cache_ram_fraction == 0.5 and recipe.override(["cache_ram_fraction=0.1"]).cache_ram_fraction == 0.1
    with pytest.raises(DabnetError, match="cache_ram_fraction"):
        recipe.replace(cache_ram_fraction=1.5)


def test_subset_of_a_cached_split_keeps_the_matching_decoded_samples(camvid_tiny: Path) -> None:
    full = build_dataset("camvid", camvid_tiny, "val")
    names = [full.name(i) for i in range(len(full))]
    cached = build_dataset("camvid", camvid_tiny, "val").cache_in_memory(progress=False)
    arrays = {name: cached.load(i)[0] for i, name in enumerate(names)}
    subset(cached, 4)
    assert len(cached._cache) == 4
    for i in range(4):
        assert cached.load(i)[0] is arrays[cached.name(i)]


@pytest.mark.slow
def test_streamed_and_cached_training_give_the_same_weights(
    camvid_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same seed, cached in RAM vs decoded per access (in-process and in 2 loader workers): same samples,
    same augmentations, same weights; the log says which path was taken and why."""
    recipe = get_recipe("camvid", "smoke").replace(epochs=1, val_every=0, save_every=0, crop_size=(48, 64))
    cached = fit(recipe, camvid_tiny, tmp_path / "cached", quiet=True)
    assert "camvid train (8 images, ~0.01 GB decoded): decoded once into RAM" in capsys.readouterr().out
    streamed = fit(recipe.replace(cache_ram_fraction=0.0), camvid_tiny, tmp_path / "streamed", quiet=True)
    assert "decoded per access (cache_ram_fraction=0)" in capsys.readouterr().out
    workers = fit(recipe.replace(cache_ram_fraction=0.0, num_workers=2), camvid_tiny, tmp_path / "w", quiet=True)
    assert cached["iterations"] == streamed["iterations"] == 2
    assert cached["weights_digest"] == streamed["weights_digest"] == workers["weights_digest"]
