"""Optimised inference variants of a DABNet, each checked against the eager model when built.

``optimize(model, variant, example_input=..., calibration=...)`` returns an :class:`Optimized`
callable with the model's contract: images ``(N, 3, H, W)`` float32 (mean-subtracted, as the engine
feeds them) -> logits ``(N, C, H, W)`` float32. Variants (``VARIANTS``):

- ``eager``: the model as it is, under ``torch.inference_mode``.
- ``channels_last``: weights and input in NHWC memory format (oneDNN's preferred layout).
- ``folded``: every eval BatchNorm that directly follows a convolution folded into it (exact up to
  float rounding). The BN-PReLUs after concatenations and at the start of DAB modules have no
  preceding convolution and stay.
- ``compiled``: ``folded`` + ``channels_last`` weights, run through :class:`InferenceForward`
  (the same arithmetic in a compiler-friendly order) and ``torch.compile`` (Inductor) with
  ``freezing`` (weights become constants: prepacked oneDNN convolutions, fused pointwise kernels)
  and the C++ wrapper.
- ``onnxruntime``: ONNX export (TorchScript-based exporter) run by an ORT session with all graph
  optimisations and ``intra_op_num_threads`` set.
- ``openvino``: the model converted by OpenVINO's PyTorch frontend (static input shape) and run by
  its CPU plugin with ``INFERENCE_PRECISION_HINT f32`` (otherwise it runs bf16 on CPUs with AMX),
  the latency hint and ``INFERENCE_NUM_THREADS`` set. Needs the ``openvino`` extra.
- ``openvino_int8``: the same model quantised by NNCF post-training quantisation (default preset),
  calibrated on the same images as ``int8``, non-quantised ops kept f32 as in ``int8``.
- ``int8``: PT2E post-training static quantisation for x86 (``torchao``'s ``X86InductorQuantizer``)
  of :class:`InferenceForward`, calibrated on real images, then ``torch.compile`` with freezing.
  Depth-wise convolutions stay fp32: oneDNN's int8 depth-wise path is slower here than fp32
  (0.4 MFLOP/pixel of them against 3 GFLOP of dense convolutions, which run int8 on AMX).

``REGISTRY`` holds every variant by name, in table order: its CPU builder, its accelerator builder
(:mod:`.device_builders`; ``fp16`` and ``bf16`` exist only there), runtime and precision; ``VARIANTS``,
``INT8_VARIANTS`` and the lists the speed targets compare are read from it.

fp32 variants must match eager within ``FP32_TOLERANCE`` relative logit difference
(``max|a - b| / max|a|``); the int8 variants (``INT8_VARIANTS``) report predicted-label agreement
with eager in percent. A variant whose package is missing raises :class:`VariantError` saying what
to ``pip install``.
Compile-based variants are specialised to ``example_input``'s shape.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..devices import to_memory_format
from ..errors import DabnetError, first_line
from . import device_builders
from .device_builders import DeviceBuilder, Fn
from .inference_rewrites import InferenceForward, count_batchnorms, fold_batchnorm

FP32_TOLERANCE = 1e-3  # max relative logit difference allowed for fp32 variants
INT8_MIN_AGREEMENT = 90.0  # % of pixels whose predicted label must match eager for "ok"
ONNX_OPSET = 17
TORCHAO_PIP = "torchao==0.18.0"  # the version checked against torch 2.13 here
OPENVINO_PIP = "pip install openvino==2026.4.1 nncf==3.4.0 (or pip install -e '.[openvino]')"  # pyproject's extra


class VariantError(DabnetError):
    """A variant that cannot be built on this machine, or is unknown; the message says why."""


@dataclass
class Optimized:
    """A built variant: call it like the model. ``parity`` holds the check against eager."""

    variant: str
    fn: Fn
    build_s: float = 0.0
    parity: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


# --------------------------------------------------------------------------- parity checks


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``max|a - b| / max|a|`` over all logits (0 when both are all zero)."""
    a, b = reference.detach().float(), other.detach().float()
    denom = a.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / denom if denom > 0 else diff


def label_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Percentage (0..100) of pixels whose argmax class is the same in both logit tensors."""
    return 100.0 * (reference.argmax(1) == other.argmax(1)).float().mean().item()


def _fp32_parity(ref: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    if out.shape != ref.shape:
        return {
            "metric": "shape",
            "value": None,
            "ok": False,
            "text": f"FAIL shape {tuple(out.shape)} vs eager {tuple(ref.shape)}",
        }
    rel = relative_difference(ref, out)
    ok = rel <= FP32_TOLERANCE
    return {"metric": "max_rel_diff", "value": rel, "ok": ok, "text": f"{'ok' if ok else 'FAIL'} rel {rel:.1e}"}


# --------------------------------------------------------------------------- builders


def _no_grad_fn(fn: Fn) -> Fn:
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(images)

    return run


def _channels_last_fn(module: nn.Module) -> Fn:
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images.contiguous(memory_format=torch.channels_last))

    return run


@contextlib.contextmanager
def _inductor_options() -> Iterator[None]:
    """Inductor settings for the compiles (and any shape recompiles) made inside: ``freezing``
    (parameters become constants: BN folding, oneDNN weight prepacking) and ``cpp_wrapper`` (the
    kernel launcher is C++, not Python: about 1 ms less per call here)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True, cpp_wrapper=True):
        yield


def _compiled_fn(module: nn.Module) -> Fn:
    """``torch.compile(module)`` (static shapes) called under no_grad with :func:`_inductor_options`."""
    compiled = torch.compile(module, dynamic=False)

    def run(images: torch.Tensor) -> torch.Tensor:
        # no_grad (not inference_mode): Inductor freezing lifts parameters to constants under no_grad.
        with torch.no_grad(), _inductor_options():
            return compiled(images)

    return run


@dataclass(frozen=True)
class BuildInputs:
    """What a CPU build gets: the model (eval mode), the input (N, 3, H, W) it is traced, compiled and
    checked at, calibration batches (int8 variants only, else empty) and the ORT / OpenVINO threads."""

    model: nn.Module
    example: torch.Tensor
    calibration: Sequence[torch.Tensor]
    threads: int


#: A CPU build: its inputs -> (callable, notes).
CpuBuilder = Callable[[BuildInputs], tuple[Fn, str]]


def _build_eager(b: BuildInputs) -> tuple[Fn, str]:
    return _no_grad_fn(b.model), ""


def _build_channels_last(b: BuildInputs) -> tuple[Fn, str]:
    return _channels_last_fn(to_memory_format(copy.deepcopy(b.model), torch.channels_last)), ""


def _build_folded(b: BuildInputs) -> tuple[Fn, str]:
    folded = fold_batchnorm(b.model)
    left = count_batchnorms(folded)
    return _no_grad_fn(folded), f"{count_batchnorms(b.model) - left} BN folded, {left} left"


def _build_compiled(b: BuildInputs) -> tuple[Fn, str]:
    module = InferenceForward(to_memory_format(fold_batchnorm(b.model), torch.channels_last))
    # NCHW input: the compiled graph converts it itself as fast as a separate .contiguous() call would.
    return (_compiled_fn(module), "folded + channels_last weights + InferenceForward + inductor freezing, C++ wrapper")


def onnx_bytes(model: nn.Module, example_input: torch.Tensor, dynamic: bool = True) -> bytes:
    """Export ``model`` to ONNX (opset ``ONNX_OPSET``, TorchScript-based exporter) and return the bytes.

    Input ``image`` (N, 3, H, W), output ``logits`` (N, C, H, W); with ``dynamic`` the batch, height
    and width axes are symbolic. Raises :class:`VariantError` when export fails.
    """
    buf = io.BytesIO()
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the shape checks in forward
            torch.onnx.export(
                model.eval(),
                (example_input,),
                buf,  # type: ignore[arg-type]  # the stub says a path; the TorchScript exporter writes file objects too
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes=axes if dynamic else None,
            )
    except Exception as exc:  # exporter missing an op, onnx package missing, ...
        raise VariantError(f"ONNX export failed: {type(exc).__name__}: {first_line(exc, 200)}") from exc
    return buf.getvalue()


def ort_session(model_bytes_or_path: bytes | str, threads: int) -> Any:
    """An onnxruntime CPU session with ORT_ENABLE_ALL and ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise VariantError("onnxruntime is not installed: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, opts, providers=["CPUExecutionProvider"])


def ort_fn(session: Any) -> Fn:
    """Wrap an ORT session as ``(N, 3, H, W) tensor -> (N, C, H, W) tensor`` (CPU, float32)."""
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {name: array})[0])

    return run


def _build_onnxruntime(b: BuildInputs) -> tuple[Fn, str]:
    session = ort_session(onnx_bytes(b.model, b.example), b.threads)
    return ort_fn(session), f"opset {ONNX_OPSET}, ORT_ENABLE_ALL, {b.threads} intra-op threads"


def _openvino() -> Any:
    """The ``openvino`` module, or :class:`VariantError` saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise VariantError(f"openvino is not installed: {OPENVINO_PIP}") from exc
    return openvino


def openvino_model(model: nn.Module, example_input: torch.Tensor, dynamic: bool = False) -> Any:
    """``model`` converted by OpenVINO's PyTorch frontend to an ``openvino.Model`` with input
    (N, 3, H, W): ``example_input``'s static shape, or with ``dynamic`` batch, height and width."""
    ov = _openvino()
    shape = [-1, 3, -1, -1] if dynamic else list(example_input.shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the shape checks in forward
            return ov.convert_model(model.eval(), example_input=example_input, input=[ov.PartialShape(shape)])
    except Exception as exc:
        raise VariantError(f"OpenVINO conversion failed: {type(exc).__name__}: {first_line(exc, 200)}") from exc


def openvino_fn(ov_model: Any, threads: int) -> Fn:
    """An ``openvino.Model`` (or IR path) compiled for the CPU plugin, f32 precision, latency hint,
    ``threads`` inference threads, wrapped as ``(N, 3, H, W) tensor -> (N, C, H, W) tensor``."""
    ov = _openvino()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request, output = compiled.create_infer_request(), compiled.output(0)

    def run(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(request.infer([array])[output].copy())

    return run


def _build_openvino(b: BuildInputs) -> tuple[Fn, str]:
    fn = openvino_fn(openvino_model(b.model, b.example), b.threads)
    notes = f"f32 precision hint, latency hint, {b.threads} threads"
    return _fixed_shape(fn, tuple(b.example.shape), "openvino"), notes


def _build_openvino_int8(b: BuildInputs) -> tuple[Fn, str]:
    """NNCF post-training quantisation of the OpenVINO model, calibrated on ``b.calibration``."""
    import logging

    _openvino()
    try:
        import nncf
    except ImportError as exc:
        raise VariantError(f"nncf is not installed: {OPENVINO_PIP}") from exc
    shape = tuple(b.example.shape)
    _check_calibration(b.calibration, shape)
    items = [x.numpy() for x in _calibration_inputs(b.calibration, shape)]
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(openvino_model(b.model, b.example), nncf.Dataset(items), subset_size=len(items))
    fn = openvino_fn(quantized, b.threads)
    return _fixed_shape(fn, shape, "openvino_int8"), (
        f"NNCF post-training quantisation, {len(items)} calibration image(s), f32 elsewhere, {b.threads} threads"
    )


def _torchao_pt2e() -> tuple[Any, Any, Any, Any]:
    """The PT2E entry points (moved from torch.ao to torchao in recent PyTorch)."""
    import logging

    # torchao's CPU wheels log "Failed to load <its CUDA kernels>" on import: harmless here.
    ao_logger = logging.getLogger("torchao")
    level = ao_logger.level
    ao_logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as exc:
        raise VariantError(
            f"needs torchao (PT2E quantisation left torch.ao in torch {torch.__version__.split('+')[0]}): "
            f"pip install {TORCHAO_PIP} ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        ao_logger.setLevel(level)
    return prepare_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


def depthwise_conv_names(model: nn.Module) -> list[str]:
    """Qualified names of the depth-wise convolutions (``groups == in_channels > 1``) in ``model``."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]


def _check_calibration(calibration: Sequence[torch.Tensor], shape: tuple[int, ...]) -> None:
    for batch in calibration:
        if tuple(batch.shape[1:]) != shape[1:]:
            raise VariantError(f"calibration batch {tuple(batch.shape)} does not match the input size {shape}")


def _calibration_inputs(calibration: Sequence[torch.Tensor], shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """Each calibration image broadcast to the built input ``shape`` (batch 1 keeps calibration at
    the exported shape); the same inputs for PT2E and NNCF."""
    for batch in calibration:
        for i in range(batch.shape[0]):
            yield batch[i : i + 1].expand(shape).contiguous()


def _fixed_shape(fn: Fn, shape: tuple[int, ...], variant: str) -> Fn:
    """``fn`` refusing inputs of another shape than the one it was built for, with a clear message."""

    def run(images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape) != shape:
            raise VariantError(
                f"{variant} variant was built for input {shape}, got {tuple(images.shape)}: "
                "rebuild it with an example_input of that shape"
            )
        return fn(images)

    return run


def _build_int8(b: BuildInputs, keep_fp32: Sequence[str] | None = None) -> tuple[Fn, str]:
    """PT2E int8 of ``InferenceForward(b.model)``; modules named in ``keep_fp32`` (default: the
    depth-wise convolutions) are left unquantised. Inductor runs on torch's threads."""
    model, example, calibration = b.model, b.example, b.calibration
    prepare_pt2e, convert_pt2e, Quantizer, default_config = _torchao_pt2e()
    if torch.backends.quantized.engine not in ("x86", "onednn", "fbgemm"):
        raise VariantError(f"int8 needs an x86 quantised engine, this build has {torch.backends.quantized.engine!r}")
    shape = tuple(example.shape)
    _check_calibration(calibration, shape)
    quantizer = Quantizer()
    quantizer.set_global(default_config())
    module = InferenceForward(copy.deepcopy(model).eval())
    if keep_fp32 is None:
        keep_fp32 = depthwise_conv_names(module)
    for name in keep_fp32:
        quantizer.set_module_name_qconfig(name, None)
    exported = torch.export.export(module, (example,)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input of maxpool2d is not quantized": expected, it follows a float op
        prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for image in _calibration_inputs(calibration, shape):
            prepared(image)
    converted = convert_pt2e(prepared)
    n = sum(batch.shape[0] for batch in calibration)
    return _fixed_shape(_compiled_fn(converted), shape, "int8"), (
        f"PT2E X86InductorQuantizer, {n} calibration image(s), {len(keep_fp32)} conv(s) kept fp32, "
        "InferenceForward + inductor freezing, C++ wrapper"
    )


@dataclass(frozen=True)
class Variant:
    """One inference variant: its CPU build (None: accelerator only), its accelerator build
    (:mod:`.device_builders`; None: CPU only), the runtime that executes it and its arithmetic
    (``fp32``; ``fp16``/``bf16`` autocast; ``int8``: needs calibration, checked by label agreement)."""

    cpu: CpuBuilder | None
    device: DeviceBuilder | None
    runtime: str = "PyTorch"
    precision: str = "fp32"


#: Every variant by name, in table order (CPU tables skip the accelerator-only ones).
REGISTRY: dict[str, Variant] = {
    "eager": Variant(_build_eager, device_builders.eager),
    "channels_last": Variant(_build_channels_last, device_builders.channels_last),
    "folded": Variant(_build_folded, device_builders.folded),
    "compiled": Variant(_build_compiled, device_builders.compiled),
    "fp16": Variant(None, device_builders.autocast(torch.float16, "fp16"), precision="fp16"),
    "bf16": Variant(None, device_builders.autocast(torch.bfloat16, "bf16"), precision="bf16"),
    "onnxruntime": Variant(_build_onnxruntime, None, runtime="onnxruntime"),
    "openvino": Variant(_build_openvino, None, runtime="OpenVINO"),
    "int8": Variant(_build_int8, None, precision="int8"),
    "openvino_int8": Variant(_build_openvino_int8, None, runtime="OpenVINO", precision="int8"),
}
#: The variants built on the CPU, in table order.
VARIANTS: tuple[str, ...] = tuple(name for name, v in REGISTRY.items() if v.cpu is not None)
#: The CPU variants checked by label agreement, which need calibration images.
INT8_VARIANTS: tuple[str, ...] = tuple(name for name in VARIANTS if REGISTRY[name].precision == "int8")


def _build(
    model: nn.Module,
    variant: str,
    example_input: torch.Tensor,
    calibration: Sequence[torch.Tensor] | None,
    threads: int,
) -> tuple[Fn, str]:
    """(callable, notes) for CPU ``variant``; no checks, no first call."""
    build = REGISTRY[variant].cpu
    assert build is not None  # optimize() accepts only VARIANTS
    if variant in INT8_VARIANTS and not calibration:
        raise VariantError(f"{variant} needs calibration images (normalised training images of the input size)")
    return build(BuildInputs(model, example_input, calibration or (), threads))


def optimize(
    model: nn.Module,
    variant: str,
    example_input: torch.Tensor | None = None,
    calibration: Sequence[torch.Tensor] | None = None,
    threads: int | None = None,
    check_inputs: Sequence[torch.Tensor] | None = None,
) -> Optimized:
    """Build ``variant`` of ``model`` (eval mode, CPU float32) and check it against eager.

    example_input: (N, 3, H, W) used to trace/compile and for the fp32 parity check (default: one
    random 64x96 image). calibration: int8 variants only, batches (n, 3, H, W) of normalised real images.
    check_inputs: extra inputs for the int8 variants' label-agreement check (default: the calibration batches).
    threads: ORT / OpenVINO threads (default: ``torch.get_num_threads()``).
    The first call (compile, warm-up) happens here, its time is ``build_s``. Raises :class:`VariantError`
    for an unknown or unavailable variant.
    """
    if variant not in VARIANTS:
        raise VariantError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    model = model.eval()
    if example_input is None:
        example_input = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    threads = threads or torch.get_num_threads()
    start = time.perf_counter()
    try:
        fn, notes = _build(model, variant, example_input, calibration, threads)
        out = fn(example_input)  # first call: compiles where it applies
    except VariantError:
        raise
    except Exception as exc:  # an exporter/compiler/quantiser failure: report it in this variant's row
        first = first_line(exc)
        raise VariantError(f"{variant} could not be built or run here: {type(exc).__name__}: {first}") from exc
    build_s = time.perf_counter() - start
    eager = _no_grad_fn(model)  # variants run outside inference_mode (compiled graphs are guarded on it)
    if variant in INT8_VARIANTS:
        inputs = _batches_like(list(check_inputs or calibration or [example_input]), example_input.shape)
        agree = [label_agreement(eager(x), fn(x)) for x in inputs]
        value = sum(agree) / len(agree)
        ok = value >= INT8_MIN_AGREEMENT
        parity = {
            "metric": "label_agreement_pct",
            "value": value,
            "ok": ok,
            "text": f"{'ok' if ok else 'LOW'} labels {value:.1f}% agree",
        }
    else:
        parity = _fp32_parity(eager(example_input), out)
    return Optimized(variant, fn, build_s, parity, notes)


def _batches_like(inputs: Sequence[torch.Tensor], shape: torch.Size) -> list[torch.Tensor]:
    """Regroup image batches ``inputs`` (n_i, 3, H, W) into batches of ``shape`` (the int8 variants'
    fixed input shape): all images in order, cycled when there are fewer than one batch."""
    images = torch.cat(list(inputs), dim=0)
    n = shape[0]
    if images.shape[0] < n:
        images = images.repeat(-(-n // images.shape[0]), 1, 1, 1)
    return [images[i : i + n] for i in range(0, images.shape[0] - n + 1, n)]
