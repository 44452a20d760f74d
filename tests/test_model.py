"""dabnet_lib.model.dabnet: the paper's network, official parity, checkpoints and ablation knobs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from dabnet_lib.model.dabnet import (
    CheckpointError,
    DABNet,
    DABNetConfig,
    build_from_checkpoint,
    count_parameters,
    load_weights,
)
from dabnet_lib.workbook.paper import PAPER_PARAMS


@pytest.fixture(scope="module")
def official(official_fixture_path: Path) -> dict:
    return torch.load(official_fixture_path, weights_only=True)


def test_parameter_counts_match_paper() -> None:
    assert count_parameters(DABNet(19)) == PAPER_PARAMS
    assert count_parameters(DABNet(11)) == 754_571


def test_state_dict_keys_match_official_release(official: dict) -> None:
    assert list(DABNet(11).state_dict()) == list(official["model"])
    keys = set(DABNet(19).state_dict())
    for key in (
        "init_conv.0.conv.weight",
        "DAB_Block_1.DAB_Module_1_0.conv3x3.conv.weight",
        "DAB_Block_2.DAB_Module_2_5.ddconv1x3.conv.weight",
        "bn_prelu_1.bn.weight",
        "classifier.0.conv.weight",
    ):
        assert key in keys


def test_reproduces_official_logits(official: dict) -> None:
    model = DABNet(11)
    load_weights(model, official["model"])
    model.eval()
    with torch.no_grad():
        logits = model(official["input"])
    assert logits.shape == official["logits"].shape
    assert (logits - official["logits"]).abs().max().item() < 1e-4


def test_loads_official_file_with_module_prefix(official: dict, tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"epoch": 7, "model": {"module." + k: v for k, v in official["model"].items()}}, path)
    model = DABNet(11)
    obj = load_weights(model, path)
    assert obj["epoch"] == 7
    assert torch.equal(model.state_dict()["classifier.0.conv.weight"], official["model"]["classifier.0.conv.weight"])
    rebuilt, _ = build_from_checkpoint(path)
    assert rebuilt.num_classes == 11 and not rebuilt.training


def test_wrong_class_count_names_file_and_counts(official: dict, tmp_path: Path) -> None:
    path = tmp_path / "cls11.pt"
    torch.save({"epoch": 1, "model": official["model"]}, path)
    before = DABNet(19).state_dict()["classifier.0.conv.weight"].clone()
    model = DABNet(19)
    model.load_state_dict({**model.state_dict(), "classifier.0.conv.weight": before})
    with pytest.raises(CheckpointError, match=r"cls11\.pt.*11 classes.*19"):
        load_weights(model, path)
    assert torch.equal(model.state_dict()["classifier.0.conv.weight"], before)


def test_missing_and_unexpected_keys(official: dict, tmp_path: Path) -> None:
    sd = dict(official["model"])
    sd.pop("bn_prelu_1.bn.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"odd\.pt.*missing keys \[bn_prelu_1\.bn\.weight\].*extra\.weight"):
        load_weights(DABNet(11), path)
    with pytest.raises(CheckpointError, match="does not match this model config"):
        load_weights(DABNet(11, DABNetConfig(branches="local")), official["model"])


def test_truncated_and_non_checkpoint_files(official: dict, tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"model": official["model"]}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=r"truncated\.pt.*truncated or corrupt"):
        load_weights(DABNet(11), truncated)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        load_weights(DABNet(11), text)
    with pytest.raises(CheckpointError, match=r"nowhere\.pt.*no such file"):
        load_weights(DABNet(11), tmp_path / "nowhere.pt")
    tensors_only = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], tensors_only)
    with pytest.raises(CheckpointError, match=r"list\.pt.*expected a dict"):
        load_weights(DABNet(11), tensors_only)


class TrainingArgs:
    """A custom object some training scripts pickle into their checkpoints."""

    lr = 0.1


def test_a_valid_checkpoint_with_a_pickled_object_is_refused_as_unsafe(official: dict, tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": official["model"], "args": TrainingArgs()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.pt: refused as unsafe: it pickles \S*TrainingArgs,") as err:
        load_weights(DABNet(11), unsafe)
    message = str(err.value)
    assert "corrupt" not in message and "weights_only=False" in message and "\n" not in message


ABLATIONS = [
    DABNetConfig(
        **dict(zip(("branches", "dw_shape", "branch_conv", "dw_kernel", "input_injection"), combo, strict=True))
    )
    for combo in itertools.product(
        ("both", "local", "dilated"), ("asymmetric", "square"), ("depthwise", "standard"), (3, 5), (True, False)
    )
] + [DABNetConfig(blocks_1=2, dilations_1=(2, 2), blocks_2=4, dilations_2=(2, 4, 8, 16))]


def ablation_params(fast_knobs: int) -> list:
    """ABLATIONS as pytest params: configs that change at most ``fast_knobs`` knobs of the paper's run in every
    tier, the others are marked ``slow``."""
    paper = DABNetConfig().to_dict()
    params = []
    for cfg in ABLATIONS:
        changed = sum(value != paper[key] for key, value in cfg.to_dict().items())
        marks = () if changed <= fast_knobs else (pytest.mark.slow,)
        params.append(pytest.param(cfg, marks=marks, id="-".join(str(v) for v in cfg.to_dict().values())))
    return params


@pytest.mark.parametrize("cfg", ablation_params(fast_knobs=0))  # a forward + backward pass each: seconds
def test_every_ablation_config_trains(cfg: DABNetConfig) -> None:
    torch.manual_seed(0)
    model = DABNet(5, cfg)
    out = model(torch.randn(2, 3, 32, 48))
    assert out.shape == (2, 5, 32, 48)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_ablations_change_the_network() -> None:
    base = count_parameters(DABNet(11))
    assert count_parameters(DABNet(11, DABNetConfig(branches="local"))) < base
    square = DABNet(11, DABNetConfig(dw_shape="square"))
    # 3x3 (9 weights + 3 BN/PReLU per channel) costs exactly 3x1+1x3 (6 + 2x3): same count, other layers
    assert count_parameters(square) == base
    assert square.DAB_Block_1.DAB_Module_1_0.dconv3x3.conv.kernel_size == (3, 3)
    assert not hasattr(square.DAB_Block_1.DAB_Module_1_0, "dconv3x1")
    assert count_parameters(DABNet(11, DABNetConfig(branch_conv="standard"))) > base
    assert count_parameters(DABNet(11, DABNetConfig(input_injection=False))) < base
    dk5 = DABNet(11, DABNetConfig(dw_kernel=5))
    conv = dk5.DAB_Block_2.DAB_Module_2_5.ddconv5x1.conv
    assert conv.kernel_size == (5, 1) and conv.dilation == (16, 1) and conv.padding == (32, 0)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="dilations_2 has 6 rates but blocks_2 is 4"):
        DABNetConfig(blocks_2=4)
    with pytest.raises(ValueError, match="branches"):
        DABNetConfig(branches="neither")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dw_kernel"):
        DABNetConfig(dw_kernel=4)
    with pytest.raises(ValueError, match="unknown field"):
        DABNetConfig.from_dict({"blocks": 3})
    assert DABNetConfig.from_dict(DABNetConfig().to_dict()) == DABNetConfig()


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (45, 61), (97, 130), (360, 480)])
def test_any_input_size_gives_same_size_logits(size: tuple[int, int]) -> None:
    model = DABNet(11).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 11, *size)


def test_rejects_bad_input_shapes() -> None:
    model = DABNet(11).eval()
    with pytest.raises(ValueError, match="H, W >= 16"):
        model(torch.randn(1, 3, 8, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
