"""DABNet (Li & Kim, BMVC 2019), written once with its ablation knobs in :class:`DABNetConfig`.

``DABNet(num_classes)`` with the default config is the published network: 756,643 parameters
for 19 classes, 754,571 for 11, with state-dict keys identical to the official PyTorch release
(``init_conv.0.conv.weight``, ``DAB_Block_1.DAB_Module_1_0.conv3x3.conv.weight``, ...), so its
checkpoints load unchanged through :func:`load_weights`.

Shapes: input images ``(N, 3, H, W)`` float, any ``H, W >= 16``; logits ``(N, C, H, W)``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, first_line

BN_EPS = 1e-3  # the paper's (and official code's) BatchNorm epsilon
MIN_INPUT_SIZE = 16


@dataclass(frozen=True)
class DABNetConfig:
    """The architecture's knobs; the defaults are the paper's network.

    blocks_1, blocks_2: DAB modules in stage 1 (64 channels, 1/4) and stage 2 (128 channels, 1/8).
    dilations_1, dilations_2: dilation rate of each module's dilated branch, one per module.
    branches: ``"both"`` (paper), ``"local"`` (plain branch only) or ``"dilated"`` (dilated only).
    dw_shape: ``"asymmetric"`` (k x 1 then 1 x k, paper) or ``"square"`` (one k x k).
    branch_conv: ``"depthwise"`` (paper) or ``"standard"`` (dense convolutions in the branches).
    dw_kernel: branch kernel size k (odd; 3 in the paper); padding is derived from it.
    input_injection: concatenate the down-sampled image before each stage (paper: on).
    """

    blocks_1: int = 3
    blocks_2: int = 6
    dilations_1: tuple[int, ...] = (2, 2, 2)
    dilations_2: tuple[int, ...] = (4, 4, 8, 8, 16, 16)
    branches: Literal["both", "local", "dilated"] = "both"
    dw_shape: Literal["asymmetric", "square"] = "asymmetric"
    branch_conv: Literal["depthwise", "standard"] = "depthwise"
    dw_kernel: int = 3
    input_injection: bool = True

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"DABNetConfig: {msg}")

        if self.blocks_1 < 1 or self.blocks_2 < 1:
            fail(f"blocks_1 and blocks_2 must be >= 1, got {self.blocks_1}, {self.blocks_2}")
        # Tuples arrive as lists from JSON / notebook parameters: normalise them.
        object.__setattr__(self, "dilations_1", tuple(int(d) for d in self.dilations_1))
        object.__setattr__(self, "dilations_2", tuple(int(d) for d in self.dilations_2))
        for stage, blocks, dil in ((1, self.blocks_1, self.dilations_1), (2, self.blocks_2, self.dilations_2)):
            if len(dil) != blocks:
                fail(f"dilations_{stage} has {len(dil)} rates but blocks_{stage} is {blocks}: give one rate per module")
            if any(d < 1 for d in dil):
                fail(f"dilations_{stage} must be >= 1, got {dil}")
        if self.branches not in ("both", "local", "dilated"):
            fail(f"branches must be 'both', 'local' or 'dilated', got {self.branches!r}")
        if self.dw_shape not in ("asymmetric", "square"):
            fail(f"dw_shape must be 'asymmetric' or 'square', got {self.dw_shape!r}")
        if self.branch_conv not in ("depthwise", "standard"):
            fail(f"branch_conv must be 'depthwise' or 'standard', got {self.branch_conv!r}")
        if self.dw_kernel < 1 or self.dw_kernel % 2 == 0:
            fail(f"dw_kernel must be a positive odd number, got {self.dw_kernel}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DABNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"DABNetConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


class BNPReLU(nn.Module):
    """BatchNorm (eps 1e-3) then per-channel PReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.acti = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.acti(self.bn(x))


class Conv(nn.Module):
    """Bias-free convolution, optionally followed by :class:`BNPReLU` (key ``bn_prelu``)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bn_acti: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=False)
        self.bn_prelu = BNPReLU(c_out) if bn_acti else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.bn_prelu(x) if self.bn_prelu is not None else x


def _branch(channels: int, dilation: int, cfg: DABNetConfig) -> list[tuple[str, Conv]]:
    """The convolutions of one DAB branch as (suffix, module): ``3x1``/``1x3`` or ``3x3``."""
    k = cfg.dw_kernel
    groups = channels if cfg.branch_conv == "depthwise" else 1
    pad = dilation * (k - 1) // 2  # "same" padding for a dilated odd kernel
    if cfg.dw_shape == "square":
        return [(f"{k}x{k}", Conv(channels, channels, k, 1, pad, dilation, groups, bn_acti=True))]
    return [
        (f"{k}x1", Conv(channels, channels, (k, 1), 1, (pad, 0), (dilation, 1), groups, bn_acti=True)),
        (f"1x{k}", Conv(channels, channels, (1, k), 1, (0, pad), (1, dilation), groups, bn_acti=True)),
    ]


class DABModule(nn.Module):
    """Depth-wise Asymmetric Bottleneck: ``(N, C, H, W) -> (N, C, H, W)``, residual.

    BN-PReLU -> 3x3 conv to C/2 -> local branch (dilation 1) + dilated branch (dilation d),
    each depth-wise k x 1 then 1 x k -> sum -> BN-PReLU -> 1x1 conv to C -> + input.
    """

    def __init__(self, channels: int, dilation: int, cfg: DABNetConfig = DABNetConfig()) -> None:
        super().__init__()
        half = channels // 2
        self.bn_relu_1 = BNPReLU(channels)
        self.conv3x3 = Conv(channels, half, 3, 1, 1, bn_acti=True)
        self._local: list[str] = []
        self._dilated: list[str] = []
        if cfg.branches in ("both", "local"):
            for suffix, conv in _branch(half, 1, cfg):
                self.add_module("dconv" + suffix, conv)
                self._local.append("dconv" + suffix)
        if cfg.branches in ("both", "dilated"):
            for suffix, conv in _branch(half, dilation, cfg):
                self.add_module("ddconv" + suffix, conv)
                self._dilated.append("ddconv" + suffix)
        self.bn_relu_2 = BNPReLU(half)
        self.conv1x1 = Conv(half, channels, 1, 1, 0)

    def _run(self, names: list[str], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3x3(self.bn_relu_1(x))
        if self._local and self._dilated:
            y = self._run(self._local, y) + self._run(self._dilated, y)
        else:
            y = self._run(self._local or self._dilated, y)
        return self.conv1x1(self.bn_relu_2(y)) + x


class DownSamplingBlock(nn.Module):
    """Stride-2 3x3 conv (concatenated with a 2x2 max-pool when widening) then BN-PReLU.

    ``(N, c_in, H, W) -> (N, c_out, ceil(H/2), ceil(W/2))``. The max-pool uses ``ceil_mode`` so
    odd sizes line up with the convolution; for even sizes this is the official block exactly.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.widen = c_in < c_out
        self.conv3x3 = Conv(c_in, c_out - c_in if self.widen else c_out, 3, 2, 1)
        self.max_pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.bn_prelu = BNPReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3x3(x)
        if self.widen:
            y = torch.cat([y, self.max_pool(x)], 1)
        return self.bn_prelu(y)


class InputInjection(nn.Module):
    """The image average-pooled ``ratio`` times (3x3, stride 2, pad 1): ``H -> ceil(H / 2**ratio)``."""

    def __init__(self, ratio: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class DABNet(nn.Module):
    """DABNet for ``num_classes`` classes: images ``(N, 3, H, W)`` -> logits ``(N, C, H, W)``."""

    def __init__(self, num_classes: int, config: DABNetConfig = DABNetConfig()) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.config = config
        inj = 3 if config.input_injection else 0
        self.init_conv = nn.Sequential(
            Conv(3, 32, 3, 2, 1, bn_acti=True),
            Conv(32, 32, 3, 1, 1, bn_acti=True),
            Conv(32, 32, 3, 1, 1, bn_acti=True),
        )
        if config.input_injection:
            self.down_1 = InputInjection(1)
            self.down_2 = InputInjection(2)
            self.down_3 = InputInjection(3)
        self.bn_prelu_1 = BNPReLU(32 + inj)

        self.downsample_1 = DownSamplingBlock(32 + inj, 64)
        self.DAB_Block_1 = nn.Sequential()
        for i, d in enumerate(config.dilations_1):
            self.DAB_Block_1.add_module(f"DAB_Module_1_{i}", DABModule(64, d, config))
        self.bn_prelu_2 = BNPReLU(128 + inj)
        self.stage1_channels = 128 + inj

        self.downsample_2 = DownSamplingBlock(128 + inj, 128)
        self.DAB_Block_2 = nn.Sequential()
        for i, d in enumerate(config.dilations_2):
            self.DAB_Block_2.add_module(f"DAB_Module_2_{i}", DABModule(128, d, config))
        self.bn_prelu_3 = BNPReLU(256 + inj)

        self.classifier = nn.Sequential(Conv(256 + inj, num_classes, 1, 1, 0))

    def _cat(self, parts: list[torch.Tensor], image: torch.Tensor, pool: str) -> torch.Tensor:
        if self.config.input_injection:
            parts.append(getattr(self, pool)(image))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes, H, W) at the input's size for images (N, 3, H, W)."""
        return self.forward_with_stage1(image)[0]

    def forward_with_stage1(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, stage1)``: :meth:`forward`'s logits and stage 1's output (N, :attr:`stage1_channels`,
        ~H/4, ~W/4), the features a training-only auxiliary head reads (``training.deep_supervision``)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"DABNet expects images (N, 3, H, W), got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise ValueError(f"DABNet needs H, W >= {MIN_INPUT_SIZE}, got {h}x{w}")
        x0 = self.init_conv(image)
        x0 = self.bn_prelu_1(self._cat([x0], image, "down_1"))
        x1_0 = self.downsample_1(x0)
        x1 = self.DAB_Block_1(x1_0)
        x1 = self.bn_prelu_2(self._cat([x1, x1_0], image, "down_2"))
        x2_0 = self.downsample_2(x1)
        x2 = self.DAB_Block_2(x2_0)
        x2 = self.bn_prelu_3(self._cat([x2, x2_0], image, "down_3"))
        out = self.classifier(x2)
        return F.interpolate(out, (h, w), mode="bilinear", align_corners=False), x1


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- checkpoints


def read_checkpoint(source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """Load a checkpoint file (``weights_only=True``) into a dict, or raise :class:`CheckpointError`."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise CheckpointError(f"checkpoint {name}: no such file")
    try:
        obj = torch.load(
            io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu", weights_only=True
        )
    except Exception as exc:  # noqa: BLE001  (torch.load raises anything on a truncated zip, pickle garbage, text)
        raise CheckpointError(_unreadable_message(name, exc)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {name}: expected a dict, found {type(obj).__name__}")
    return obj


#: How torch.load(weights_only=True) names a pickled class or function it refuses to import.
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)")


def _unreadable_message(name: str, exc: Exception) -> str:
    """One line for a checkpoint ``torch.load`` could not read: a valid file refused as unsafe (it pickles
    a class or function, which a weights-only load never imports) says so and how to proceed; any
    other failure is a truncated or corrupt file."""
    unsafe = _UNSAFE_GLOBAL.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
    if unsafe:
        return (
            f"checkpoint {name}: refused as unsafe: it pickles {unsafe.group(1)}, which loading with "
            "weights_only=True does not import. If you trust the file, load it with torch.load(..., "
            'weights_only=False) and re-save {"model": model.state_dict()} with tensors and plain values only'
        )
    return f"checkpoint {name}: not a readable PyTorch checkpoint (truncated or corrupt?): {first_line(exc)}"


def extract_state_dict(obj: Mapping[str, Any], name: str = "<dict>") -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint: ``{"model": sd, ...}`` or a bare state dict.

    Strips a DataParallel/DDP ``module.`` prefix and a torch.compile ``_orig_mod.`` prefix.
    """
    sd = obj.get("model", obj)
    if isinstance(sd, nn.Module):
        sd = sd.state_dict()
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {name}: no model state dict found (keys: {sorted(obj)[:8]})")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


class _Named(dict):
    """A checkpoint dict already read from ``name`` (keeps the file name in error messages)."""

    def __init__(self, name: str, obj: Mapping[str, Any]) -> None:
        super().__init__(obj)
        self.name = name


def _resolve(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(source, _Named):
        return source.name, source
    if isinstance(source, Mapping):
        return "<dict>", dict(source)
    return str(source), read_checkpoint(source)


def load_weights(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Load weights into ``model`` from a path or an already loaded dict; returns the checkpoint dict.

    Accepts this project's checkpoints, official ``{"epoch", "model"}`` files and bare state
    dicts, keys optionally prefixed ``module.``. Raises :class:`CheckpointError` naming the file and
    the mismatch (class count, missing or unexpected keys, shapes) and leaves ``model`` untouched.
    """
    name, obj = _resolve(source)
    sd = extract_state_dict(obj, name)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    cls_key = "classifier.0.conv.weight"
    if cls_key in sd and cls_key in own and sd[cls_key].shape[0] != own[cls_key].shape[0]:
        raise CheckpointError(
            f"checkpoint {name}: it has {sd[cls_key].shape[0]} classes, the model has "
            f"{own[cls_key].shape[0]}: use a model built for the checkpoint's dataset"
        )
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        hint = ""
        saved_cfg = obj.get("model_config")
        if isinstance(saved_cfg, Mapping):
            hint = f"; the checkpoint was saved with model config {dict(saved_cfg)}"
        raise CheckpointError(
            f"checkpoint {name}: does not match this model config: "
            f"missing keys [{show(missing)}], unexpected keys [{show(unexpected)}]{hint}"
        )
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if sd[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"checkpoint {name}: shape mismatch: {'; '.join(wrong[:5])}")
    model.load_state_dict(sd, strict=True)
    return obj


def build_from_checkpoint(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[DABNet, dict[str, Any]]:
    """A :class:`DABNet` rebuilt from a checkpoint's ``num_classes``/``model_config`` (or the
    classifier shape with the paper config for official files), weights loaded, in eval mode."""
    name, obj = _resolve(source)
    sd = extract_state_dict(obj, name)
    try:
        cfg = DABNetConfig.from_dict(obj.get("model_config") or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {name}: bad model_config: {exc}") from None
    cls_w = sd.get("classifier.0.conv.weight")
    if cls_w is None:
        raise CheckpointError(f"checkpoint {name}: no classifier.0.conv.weight: not a DABNet checkpoint")
    model = DABNet(int(obj.get("num_classes", cls_w.shape[0])), cfg)
    load_weights(model, source if isinstance(source, Mapping) else _Named(name, obj))
    return model.eval(), obj
