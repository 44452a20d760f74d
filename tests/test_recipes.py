"""Recipes: the paper's values, the profiles, overrides (notebook and CLI) and their validation."""

from __future__ import annotations

import json

import pytest

from dabnet_lib.data.datasets import CAMVID_SPLIT_SIZES
from dabnet_lib.errors import DabnetError
from dabnet_lib.training.eta import final_stage_start
from dabnet_lib.training.recipes import (
    CITYSCAPES_OHEM_WEIGHTS,
    CPU_CROP,
    PROFILES,
    Recipe,
    field_names,
    get_recipe,
    parse_value,
)


def test_camvid_paper_recipe_is_the_published_one() -> None:
    r = get_recipe("camvid", "paper")
    assert (r.optimizer, r.lr, r.betas, r.weight_decay) == ("adam", 1e-3, (0.9, 0.999), 2e-4)
    assert (r.batch_size, r.epochs, r.train_split, r.crop_size, r.loss) == (16, 1000, "trainval", (360, 480), "ce")
    assert r.class_weights == "dataset" and r.mean == "official" and r.std is None
    assert (r.warmup_iters, r.warmup_ratio, r.poly_power) == (500, pytest.approx(1 / 3), 0.9)
    assert r.scales == (0.75, 1.0, 1.25, 1.5, 1.75, 2.0) and r.mirror


def test_cityscapes_paper_recipe_is_the_published_one() -> None:
    r = get_recipe("cityscapes", "paper")
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay) == ("sgd", 4.5e-2, 0.9, 1e-4)
    assert (r.batch_size, r.epochs, r.train_split, r.crop_size) == (8, 1000, "train", (512, 1024))
    assert (r.loss, r.ohem_thresh) == ("ohem", 0.7)
    assert r.class_weights == CITYSCAPES_OHEM_WEIGHTS and len(r.class_weights) == 19
    assert r.class_weights[0] == 0.8373 and r.class_weights[-1] == 1.0507


@pytest.mark.parametrize("dataset", ["camvid", "cityscapes"])
@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_builds(dataset: str, profile: str) -> None:
    r = get_recipe(dataset, profile)
    assert r.dataset == dataset and r.profile == profile
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_smoke_and_cpu_profiles_are_budgeted() -> None:
    smoke = get_recipe("camvid", "smoke")
    assert smoke.max_images is not None and smoke.max_images <= 16 and smoke.epochs <= 2
    assert smoke.train_split == "train" and smoke.val_every == 1
    cpu = get_recipe("camvid", "cpu")
    assert cpu.minutes is None and cpu.train_split == "trainval"  # iterations, not minutes
    assert cpu.crop_size == CPU_CROP and cpu.final_crop_size == (360, 480) and cpu.final_fraction > 0
    assert cpu.fused_optimizer and not smoke.fused_optimizer  # the profile takes the fast step; smoke stays exact
    assert cpu.fused_bn_prelu and not smoke.fused_bn_prelu and not get_recipe("camvid").fused_bn_prelu


def test_cpu_profile_trains_at_most_half_the_compute_of_the_60_minute_run() -> None:
    """Issue #11's cap: 9,500 full-resolution-equivalent images (a crop counts as its share of 360x480's
    pixels), half of the 19,080 that the 60-minute wall-clock profile trained."""
    cpu = get_recipe("camvid", "cpu")
    per_epoch = (CAMVID_SPLIT_SIZES["train"] + CAMVID_SPLIT_SIZES["val"]) // cpu.batch_size  # trainval, drop_last
    total = cpu.epochs * per_epoch if cpu.max_iters is None else cpu.max_iters
    start = final_stage_start(total, per_epoch, cpu.final_fraction)
    assert cpu.final_crop_size is not None and 0 < start < total
    share = cpu.crop_size[0] * cpu.crop_size[1] / (cpu.final_crop_size[0] * cpu.final_crop_size[1])
    images = cpu.batch_size * (start * share + (total - start))
    assert 7_000 < images <= 9_500


def test_unknown_dataset_or_profile() -> None:
    with pytest.raises(DabnetError, match=r"unknown profile 'gpu'.*smoke, cpu, paper"):
        get_recipe("camvid", "gpu")
    with pytest.raises(DabnetError, match="unknown dataset 'kitti'"):
        get_recipe("kitti", "paper")


def test_replace_applies_and_validates() -> None:
    r = get_recipe("camvid", "cpu").replace(
        lr=2e-3, crop_size=[256, 320], model_config={"blocks_1": 2, "dilations_1": [2, 2]}
    )
    assert r.lr == 2e-3 and r.crop_size == (256, 320) and r.model_config["blocks_1"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", -1.0),
        ("lr", "fast"),
        ("batch_size", 2.5),
        ("batch_size", 0),
        ("optimizer", "rmsprop"),
        ("crop_size", [360]),
        ("crop_size", [8, 8]),
        ("mirror", "yes"),
        ("betas", [0.9, 1.5]),
        ("model_config", {"blocks_1": 0}),
        ("class_weights", [1.0, 2.0]),
        ("final_fraction", 1.5),
        ("final_lr", 0.0),
        ("color_jitter", 1.0),
        ("color_jitter", -0.1),
        ("class_crop", 1.5),
        ("lovasz_weight", -0.5),
        ("lovasz_stride", 0),
        ("aux_weight", -0.1),
        ("max_class_ratio", 0.0),
        ("max_class_ratio", 1.2),
        ("val_split", "dev"),
        ("mean", [1, 2]),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(DabnetError, match=field):
        get_recipe("camvid", "paper").replace(**{field: value})


def test_unknown_field_lists_the_valid_ones() -> None:
    with pytest.raises(DabnetError) as err:
        get_recipe("camvid", "paper").replace(learning_rate=1e-3)
    assert "learning_rate" in str(err.value) and "lr" in str(err.value) and "batch_size" in str(err.value)
    with pytest.raises(DabnetError, match="unknown field"):
        Recipe.from_dict({**get_recipe("camvid").to_dict(), "nope": 1})


def test_cli_style_overrides_parse() -> None:
    r = get_recipe("camvid", "paper").override(
        [
            "lr=2e-3",
            "crop_size=256,320",
            "val_split=null",
            "betas=[0.8,0.99]",
            "class_weights=none",
            "mirror=false",
            "optimizer=sgd",
        ]
    )
    assert (r.lr, r.crop_size, r.val_split, r.betas) == (2e-3, (256, 320), None, (0.8, 0.99))
    assert (r.class_weights, r.mirror, r.optimizer) == ("none", False, "sgd")
    with pytest.raises(DabnetError, match="field=value"):
        get_recipe("camvid").override(["lr"])
    assert parse_value("1e-3") == 1e-3 and parse_value("adam") == "adam" and parse_value("1,2") == [1, 2]


def test_every_field_has_a_validation_rule() -> None:
    r = get_recipe("camvid", "paper")
    for name in field_names():  # replacing a field by its own value runs its rule (AssertionError if none)
        assert r.replace(**{name: getattr(r, name)}) == r
