"""The training-only auxiliary head (recipe ``aux_weight``): its loss, its wrapper, and runs that train,
publish the paper's network alone and resume exactly."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dabnet_lib.errors import CheckpointError
from dabnet_lib.model.dabnet import DABNet, build_from_checkpoint, count_parameters
from dabnet_lib.training.deep_supervision import AuxiliaryHead, DeepSupervised, WithAuxiliary, build_head
from dabnet_lib.training.engine import TrainingInterrupted, fit
from dabnet_lib.training.recipes import Recipe
from dabnet_lib.training.train_state import load_for_resume
from test_resume import _recipe as resume_recipe
from test_resume import _signal_at


@pytest.fixture(autouse=True)
def _stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DABNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stats_cache"))


def test_forward_with_stage1_gives_forwards_logits_and_quarter_resolution_features() -> None:
    torch.manual_seed(0)
    net = DABNet(11).eval()
    image = torch.randn(2, 3, 64, 96)
    logits, stage1 = net.forward_with_stage1(image)
    assert torch.equal(logits, net(image))
    assert stage1.shape == (2, net.stage1_channels, 16, 24) and net.stage1_channels == 131


def test_wrapper_stacks_main_and_auxiliary_logits_while_training_and_is_the_net_in_eval() -> None:
    torch.manual_seed(0)
    net = DABNet(5)
    head = build_head(net, seed=0)
    model = DeepSupervised(net, head)
    image = torch.randn(2, 3, 48, 64)
    out = model(image)
    assert out.shape == (2, 10, 48, 64)
    logits, stage1 = net.forward_with_stage1(image)  # train-mode BN: the batch's own statistics, same values
    aux = F.interpolate(head(stage1), (48, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, torch.cat([logits, aux], 1))
    net.eval()  # the engine switches the network (validation), not the wrapper
    assert torch.equal(model(image), net(image))


def test_head_does_not_change_the_networks_initial_weights_or_its_parameter_count() -> None:
    torch.manual_seed(3)
    plain = DABNet(11)
    torch.manual_seed(3)
    net = DABNet(11)
    head = build_head(net, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.state_dict().values(), strict=True))
    assert count_parameters(net) == count_parameters(plain)
    assert isinstance(head, AuxiliaryHead) and count_parameters(head) == 131 * 64 + 2 * 64 + 64 + 64 * 11 + 11


def test_auxiliary_loss_is_main_plus_weighted_aux_and_refuses_unstacked_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    main, aux = torch.randn(2, 4, 6, 8, generator=gen), torch.randn(2, 4, 6, 8, generator=gen)
    labels = torch.randint(0, 4, (2, 6, 8), generator=gen)
    labels[0, 0] = 255
    base = torch.nn.CrossEntropyLoss(ignore_index=255)
    loss = WithAuxiliary(base, 4, 0.4)
    expected = base(main, labels) + 0.4 * base(aux, labels)
    torch.testing.assert_close(loss(torch.cat([main, aux], 1), labels), expected)
    for channels in (4, 5):  # unstacked logits (no head ran) are refused, not scored as the main loss alone
        with pytest.raises(
            ValueError, match=f"expected 8 stacked logit channels \\(main and auxiliary\\), got {channels}"
        ):
            loss(torch.randn(2, channels, 6, 8), labels)
    with pytest.raises(ValueError, match="must be > 0"):
        WithAuxiliary(base, 4, 0.0)


def _recipe(**kw: object) -> Recipe:
    """test_resume's 8-image, 2-epoch recipe with the head on (weight 0.4)."""
    return resume_recipe(**{"aux_weight": 0.4, **kw})


@pytest.mark.slow
def test_run_with_the_head_trains_differently_publishes_the_plain_net_and_resumes_exactly(
    camvid_tiny: Path, tmp_path: Path
) -> None:
    straight = fit(_recipe(), camvid_tiny, tmp_path / "aux", quiet=True)
    plain = fit(_recipe(aux_weight=0.0), camvid_tiny, tmp_path / "plain", quiet=True)
    assert straight["weights_digest"] != plain["weights_digest"]  # the auxiliary loss reached the network
    ckpt = load_for_resume(tmp_path / "aux" / "last.pt")
    assert ckpt["aux_head"] is not None and load_for_resume(tmp_path / "plain" / "last.pt")["aux_head"] is None
    assert not any(k.startswith(("head.", "net.")) for k in ckpt["model"])
    net, _ = build_from_checkpoint(tmp_path / "aux" / "last.pt")  # the published network is DABNet alone
    assert type(net) is DABNet

    run = tmp_path / "resumed"
    for stop in (3, 5):  # inside epoch 1 and inside epoch 2
        with pytest.raises(TrainingInterrupted):
            fit(_recipe(), camvid_tiny, run, resume="auto", quiet=True, on_iteration=_signal_at(stop, signal.SIGTERM))
    resumed = fit(_recipe(), camvid_tiny, run, resume=True, quiet=True)
    assert resumed["weights_digest"] == straight["weights_digest"]
    head_a, head_b = ckpt["aux_head"], load_for_resume(run / "last.pt")["aux_head"]
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a)


@pytest.mark.slow
def test_switching_the_head_on_or_off_on_resume_is_refused_by_name(camvid_tiny: Path, tmp_path: Path) -> None:
    fit(_recipe(epochs=1, max_images=4), camvid_tiny, tmp_path, quiet=True)
    with pytest.raises(CheckpointError, match=r"trained with aux_weight=0.4, the recipe has 0.0: switching aux_weight"):
        fit(_recipe(epochs=2, max_images=4, aux_weight=0.0), camvid_tiny, tmp_path, resume=True, quiet=True)
    # another non-zero weight is a recipe change like any other
    fit(_recipe(epochs=2, max_images=4, aux_weight=1.0), camvid_tiny, tmp_path, resume=True, quiet=True)
