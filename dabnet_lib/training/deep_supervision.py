"""Deep supervision: a training-only auxiliary classifier on DABNet's stage-1 output.

The paper's DABNet is trained with one loss on its final logits. With ``recipe.aux_weight > 0`` a small head
(1x1 conv to 64 channels, BN+PReLU, 1x1 conv to the classes) also classifies stage 1's output (1/4 resolution),
and its loss, weighted by ``aux_weight``, is added to the main one (the auxiliary losses of PSPNet and
BiSeNet). The head exists only while training: it is not part of the network whose weights are published,
evaluated or exported, so the model stays the paper's (same parameters, same inference cost).

A step's model must return one tensor (``training.step.train_step``, DDP, torch.compile), so
:class:`DeepSupervised` returns the main and the auxiliary logits stacked along the class axis,
(N, 2 x classes, H, W), in training mode, and :class:`WithAuxiliary` splits them again for the loss. In eval
mode it returns the network's own logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.dabnet import BNPReLU, Conv, DABNet

#: Width of the auxiliary head's hidden layer.
AUX_HIDDEN = 64


class AuxiliaryHead(nn.Module):
    """Logits (N, classes, h, w) from features (N, c_in, h, w): 1x1 conv to :data:`AUX_HIDDEN`, BN+PReLU,
    1x1 conv to the classes (9,291 parameters for DABNet's 131 stage-1 channels and 11 classes)."""

    def __init__(self, c_in: int, num_classes: int) -> None:
        super().__init__()
        self.hidden = Conv(c_in, AUX_HIDDEN, 1, 1, 0)
        self.bn_prelu = BNPReLU(AUX_HIDDEN)
        self.classifier = nn.Conv2d(AUX_HIDDEN, num_classes, 1, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bn_prelu(self.hidden(features)))


class DeepSupervised(nn.Module):
    """``net`` with an :class:`AuxiliaryHead` on its stage-1 output. Training mode: (N, 2C, H, W), the main
    logits then the auxiliary ones bilinearly upsampled to the input size; eval mode: ``net(image)``."""

    def __init__(self, net: DABNet, head: AuxiliaryHead) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not self.net.training:  # the engine switches the network's mode (validation), not this wrapper's
            return self.net(image)
        logits, stage1 = self.net.forward_with_stage1(image)
        aux = F.interpolate(self.head(stage1), logits.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([logits, aux.to(logits.dtype)], 1)


def build_head(net: DABNet, seed: int) -> AuxiliaryHead:
    """The auxiliary head for ``net``, initialised from its own stream (``seed``) so that the network's
    initial weights do not depend on whether the head is built."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1_000_003)
        return AuxiliaryHead(net.stage1_channels, net.num_classes)


class WithAuxiliary(nn.Module):
    """Loss on (N, 2C, H, W) stacked logits (:class:`DeepSupervised` in training mode): ``base(main) + weight *
    base(aux)``, both against the same labels; ValueError for any other channel count (a head that did not run)."""

    def __init__(self, base: nn.Module, num_classes: int, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"auxiliary loss weight must be > 0, got {weight}")
        self.base = base
        self.num_classes = num_classes
        self.weight = weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 2 * self.num_classes:
            raise ValueError(
                f"expected {2 * self.num_classes} stacked logit channels (main and auxiliary), got {logits.shape[1]}"
            )
        main, aux = logits.split(self.num_classes, 1)
        return self.base(main, labels) + self.weight * self.base(aux, labels)
