"""How to train on this machine, chosen by measuring it: precision (fp32 or bf16 autocast), memory
layout (NCHW or channels_last) and torch.compile.

A recipe's ``amp``, ``channels_last`` and ``compile`` may be ``"auto"``; explicit values always win.
On a CPU, :func:`choose` times a few real training steps (forward, class-weighted CE, backward,
Adam) of each candidate the recipe allows, on the run's model at the run's crop size and batch
(random tensors: the cost depends on shapes only), and picks the fastest correct one:

- bf16 counts only where it is right and fast: bf16 in channels_last is refused where
  :func:`~dabnet_lib.training.step.bf16_channels_last_grad_error` finds this PyTorch's dilated depthwise
  gradients wrong, and bf16 is refused without timing on a CPU without bf16 units
  (:func:`~dabnet_lib.machine.has_bf16_units`), where it is emulated (7x slower than fp32 on a Zen3).
- Compiling costs about a minute per candidate on 2 cores, so only eager candidates whose speed
  times :data:`COMPILE_MAX_GAIN` reaches the best eager speed are compiled, at most
  :data:`MAX_COMPILED` of them.
- A simpler candidate (fp32 before bf16, eager before compiled) within :data:`SIMPLER_MARGIN` of the
  fastest wins: equal speed is no reason for lower precision or a minute of compilation.

The decision is cached per machine (CPU model and flags, cores, threads, torch version, model,
classes, crop, batch, candidate set) in ``cache_dir() / "autotune.json"``; a stale or corrupt cache
is ignored with a warning and re-measured, and timings taken while another process held the cores
(:data:`~dabnet_lib.machine.BUSY_CPU_SHARE`) choose for the run at hand but are not cached: on a busy
machine they rank candidates arbitrarily. On CUDA nothing is timed:
``amp="auto"`` is bf16 where the GPU computes it natively (compute capability >= 8.0), else fp16 with
GradScaler; ``channels_last="auto"`` is on; ``compile="auto"`` is off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic_files import write_bytes_atomic
from ..devices import cuda_bf16_native, to_memory_format
from ..errors import first_line
from ..machine import BUSY_CPU_SHARE, cpu_flags, cpu_name, cpu_share, has_bf16_units
from ..model.dabnet import DABNet, DABNetConfig
from ..model.fast_ops import use_fast_ops
from .step import GRAD_PROBE_TOLERANCE, bf16_channels_last_grad_error, train_step, training_layout

#: A compiled candidate is timed only if its eager speed x this reaches the best eager speed.
COMPILE_MAX_GAIN = 2.0
#: At most this many compiled candidates are timed (about a minute of compilation each on 2 cores).
MAX_COMPILED = 2
#: A simpler candidate within this fraction of the fastest one is chosen instead.
SIMPLER_MARGIN = 0.03
#: Timed steps per candidate and round, rounds (candidates interleaved), untimed warm-up steps.
STEPS_PER_ROUND, ROUNDS, WARMUP_STEPS = 2, 2, 2
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Candidate:
    """One way to train: ``amp`` "off" | "bf16" | "fp16", NCHW or channels_last, eager or compiled."""

    amp: str
    channels_last: bool
    compile: bool

    @property
    def label(self) -> str:
        """e.g. ``bf16 NCHW compiled``."""
        precision = "fp32" if self.amp == "off" else self.amp
        return (
            f"{precision} {'channels_last' if self.channels_last else 'NCHW'} {'compiled' if self.compile else 'eager'}"
        )

    def simplicity(self) -> tuple[bool, bool, bool]:
        """Sort key: lower is simpler (full precision, eager, NCHW first)."""
        return (self.amp != "off", self.compile, self.channels_last)


@dataclass(frozen=True)
class TrainingChoice:
    """What a run trains with. ``source``: ``explicit`` (the recipe said it all), ``measured``,
    ``cache``, ``checkpoint`` (a resumed run keeps its choice), ``rule`` (one candidate left) or
    ``cuda`` (nothing timed on GPUs). ``rows``: one dict per candidate considered (label, amp, channels_last,
    compile, status ``ok``/``refused``/``skipped``/``failed``, images_per_s, reason, compile_s); ``probe_s``: seconds
    spent measuring (0 when nothing was timed)."""

    amp: str
    channels_last: bool
    compile: bool
    source: str
    rows: tuple[dict[str, Any], ...] = ()
    probe_s: float = 0.0
    key: dict[str, Any] = field(default_factory=dict)
    fast_ops: bool = False

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.amp, self.channels_last, self.compile)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = [dict(r) for r in self.rows]
        d["label"] = self.candidate.label
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> TrainingChoice:
        amp, cl, comp = d["amp"], d["channels_last"], d["compile"]
        if amp not in ("off", "bf16", "fp16") or not isinstance(cl, bool) or not isinstance(comp, bool):
            raise ValueError(f"not a training choice: amp={amp!r}, channels_last={cl!r}, compile={comp!r}")
        return cls(
            amp,
            cl,
            comp,
            source or str(d["source"]),
            tuple(dict(r) for r in d.get("rows", ())),
            float(d.get("probe_s", 0.0)),
            dict(d.get("key", {})),
            bool(d.get("fast_ops", False)),
        )

    def describe(self) -> list[str]:
        """Log lines: the choice and why, then one line per candidate."""
        how = (
            f"measured here in {self.probe_s:.0f} s"
            if self.source == "measured"
            else {
                "cache": "measured on this machine before (cached)",
                "checkpoint": "kept from the resumed checkpoint",
                "rule": "the only candidate left",
                "explicit": "set by the recipe",
                "cuda": "CUDA rule: bf16 where the GPU has it natively, else fp16; channels_last; eager",
            }.get(self.source, self.source)
        )
        ops = ", fast CPU ops (dabnet_lib.model.fast_ops)" if self.fast_ops else ""
        head = f"training as {self.candidate.label}{ops} ({how})"
        lines = [head]
        for r in self.rows:
            speed = f"{r['images_per_s']:.2f} img/s" if r.get("images_per_s") is not None else r["status"]
            extra = f" (compile {r['compile_s']:.0f} s)" if r.get("compile_s") else ""
            why = f": {r['reason']}" if r.get("reason") else ""
            lines.append(f"  {'*' if r['label'] == self.candidate.label else ' '} {r['label']:<26} {speed}{extra}{why}")
        return lines


# -- the candidate set -----------------------------------------------------------------------------


def _options(value: Any, auto: tuple[Any, ...]) -> tuple[Any, ...]:
    return auto if value == "auto" else (value,)


def candidate_space(
    amp: str, channels_last: bool | str, compile: bool | str, bf16_units: bool, grad_error: Callable[[], float]
) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """The CPU candidates a recipe allows: ``(valid, refused_rows)``. ``grad_error()`` is called only
    when a bf16 channels_last candidate is possible. Explicit ``channels_last=True`` with bf16 and
    wrong gradients becomes NCHW (as :func:`~dabnet_lib.training.step.training_layout` does); under ``auto``
    the channels_last candidate is refused instead."""
    valid: list[Candidate] = []
    refused: list[dict[str, Any]] = []
    for a in _options(amp, ("off", "bf16")):
        for cl in _options(channels_last, (False, True)):
            for comp in _options(compile, (False, True)):
                cand = Candidate(a, cl, comp)
                reason = None
                if a == "bf16" and not bf16_units:
                    reason = "this CPU has no bf16 units (emulated bf16 is several times slower)"
                elif a == "bf16" and cl and not grad_error() <= GRAD_PROBE_TOLERANCE:
                    if channels_last == "auto":
                        reason = f"wrong bf16 channels_last gradients in torch {torch.__version__} (probe)"
                    else:
                        cand = Candidate(a, False, comp)
                if reason is not None:
                    refused.append(_row(cand, "refused", reason=reason))
                elif cand not in valid:
                    valid.append(cand)
    return valid, refused


def _row(
    c: Candidate, status: str, images_per_s: float | None = None, reason: str = "", compile_s: float | None = None
) -> dict[str, Any]:
    return {
        "label": c.label,
        "amp": c.amp,
        "channels_last": c.channels_last,
        "compile": c.compile,
        "status": status,
        "images_per_s": None if images_per_s is None else round(images_per_s, 3),
        "reason": reason,
        "compile_s": None if compile_s is None else round(compile_s, 1),
    }


def pick(rows: Iterable[Mapping[str, Any]]) -> Candidate | None:
    """The chosen candidate among timed rows: the fastest ``ok`` one, unless a simpler one is within
    :data:`SIMPLER_MARGIN` of it. None when no row is ``ok``."""
    ok = [
        (Candidate(r["amp"], r["channels_last"], r["compile"]), float(r["images_per_s"]))
        for r in rows
        if r["status"] == "ok" and r.get("images_per_s")
    ]
    if not ok:
        return None
    best = max(speed for _, speed in ok)
    close = [c for c, speed in ok if speed >= best * (1.0 - SIMPLER_MARGIN)]
    return min(close, key=Candidate.simplicity)


# -- timing ----------------------------------------------------------------------------------------


class StepTimer:
    """Times real training steps of candidates, interleaved: :meth:`add` builds a candidate's model
    and runs its untimed warm-up (compilation included, returned in seconds), :meth:`time_round`
    times ``STEPS_PER_ROUND`` steps of every built candidate, :meth:`images_per_s` reads the result."""

    def __init__(
        self,
        num_classes: int,
        cfg: DABNetConfig,
        crop: tuple[int, int],
        batch: int,
        fast_ops: bool = False,
        bn_prelu: bool = False,
    ) -> None:
        self.num_classes, self.cfg, self.crop, self.batch, self.fast_ops = num_classes, cfg, crop, batch, fast_ops
        self.bn_prelu = bn_prelu
        self.runners: dict[Candidate, Callable[[], None]] = {}
        self.seconds: dict[Candidate, float] = {}
        self.steps: dict[Candidate, int] = {}
        self.wall_seconds = self.cpu_seconds = 0.0  # all timed rounds, for cpu_share()

    def add(self, c: Candidate) -> float:
        cpu = torch.device("cpu")
        amp = torch.bfloat16 if c.amp == "bf16" else None
        layout = training_layout(c.channels_last, amp, cpu)
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = to_memory_format(DABNet(self.num_classes, self.cfg), layout.memory_format).train()
        use_fast_ops(model, self.fast_ops, bn_prelu=self.bn_prelu)
        run = layout.compile(model) if c.compile else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        criterion = nn.CrossEntropyLoss(weight=torch.rand(self.num_classes, generator=gen) + 1.0)
        x = torch.randn(self.batch, 3, *self.crop, generator=gen).contiguous(memory_format=layout.memory_format)
        y = torch.randint(0, self.num_classes, (self.batch, *self.crop), generator=gen)
        scaler = torch.amp.GradScaler("cpu", enabled=False)

        def step() -> None:
            train_step(run, x, y, criterion, opt, scaler, amp)

        t = time.perf_counter()
        for _ in range(WARMUP_STEPS):
            step()
        self.runners[c], self.seconds[c], self.steps[c] = step, 0.0, 0
        return time.perf_counter() - t

    def time_round(self) -> None:
        for c, step in self.runners.items():
            t, cpu = time.perf_counter(), time.process_time()
            for _ in range(STEPS_PER_ROUND):
                step()
            wall = time.perf_counter() - t
            self.seconds[c] += wall
            self.steps[c] += STEPS_PER_ROUND
            self.cpu_seconds += time.process_time() - cpu
            self.wall_seconds += wall

    def cpu_share(self) -> float | None:
        """:func:`~dabnet_lib.machine.cpu_share` of the timed rounds at torch's thread count; None before any."""
        return cpu_share(self.cpu_seconds, self.wall_seconds, torch.get_num_threads())

    def images_per_s(self, c: Candidate) -> float:
        return self.steps[c] * self.batch / self.seconds[c]


def measure(candidates: list[Candidate], timer: StepTimer, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Time ``candidates`` with ``timer``: the eager ones first, then the compiled ones the eager
    ranking leaves a chance (see the module docstring). Returns one row per candidate."""
    rows: dict[Candidate, dict[str, Any]] = {}
    compile_s: dict[Candidate, float] = {}

    def build(c: Candidate) -> bool:
        log(f"autotune: timing {c.label} ...")
        try:
            compile_s[c] = timer.add(c)
            return True
        except Exception as exc:  # noqa: BLE001  (a compiler error, a missing toolchain: that candidate fails)
            first = first_line(exc, 160)
            rows[c] = _row(c, "failed", reason=f"{type(exc).__name__}: {first}")
            return False

    eager = [c for c in candidates if not c.compile]
    for c in eager:
        build(c)
    for _ in range(ROUNDS):
        timer.time_round()
    speed = {c: timer.images_per_s(c) for c in eager if c not in rows}
    best_eager = max(speed.values(), default=0.0)
    compiled = [c for c in candidates if c.compile]
    eager_of = {c: Candidate(c.amp, c.channels_last, False) for c in compiled}
    # a compiled candidate whose eager twin was not a candidate (compile=True explicit) ranks by nothing: time it
    ranked = sorted(compiled, key=lambda c: -speed.get(eager_of[c], best_eager))
    chosen: list[Candidate] = []
    for c in ranked:
        twin = speed.get(eager_of[c])
        if len(chosen) >= MAX_COMPILED:
            rows[c] = _row(c, "skipped", reason=f"only the {MAX_COMPILED} most promising are compiled")
        elif twin is not None and twin * COMPILE_MAX_GAIN < best_eager:
            rows[c] = _row(
                c, "skipped", reason=f"eager {twin:.2f} img/s x {COMPILE_MAX_GAIN:g} < best eager {best_eager:.2f}"
            )
        else:
            chosen.append(c)
    built = [c for c in chosen if build(c)]
    if built:
        for _ in range(ROUNDS):
            timer.time_round()
    for c in candidates:
        if c not in rows:
            rows[c] = _row(c, "ok", timer.images_per_s(c), compile_s=compile_s[c] if c.compile else None)
    return [rows[c] for c in candidates]


# -- cache -----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$DABNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/dabnet``, else ``~/.cache/dabnet``."""
    if os.environ.get("DABNET_CACHE_DIR"):
        return Path(os.environ["DABNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dabnet"


def cache_key(
    candidates: Iterable[Candidate],
    num_classes: int,
    cfg: DABNetConfig,
    crop: tuple[int, int],
    batch: int,
    threads: int,
    fast_ops: bool = False,
    bn_prelu: bool = False,
) -> dict[str, Any]:
    """Everything a measured choice depends on (``bn_prelu`` only when on, so that the keys of runs without it
    stay those cached before it existed)."""
    flags = " ".join(sorted(cpu_flags()))
    key = {
        "cpu": cpu_name(),
        "cpu_flags_sha1": hashlib.sha1(flags.encode()).hexdigest()[:16],
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": str(torch.__version__),
        "model_config": cfg.to_dict(),
        "num_classes": num_classes,
        "crop": list(crop),
        "batch": batch,
        "candidates": sorted(c.label for c in candidates),
        "fast_ops": fast_ops,
    }
    if fast_ops and bn_prelu:
        key["bn_prelu"] = True
    return key


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _warn(msg: str) -> None:
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries, or {} (with a warning) when the file is unreadable or malformed."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if (
            not isinstance(data, dict)
            or data.get("format") != CACHE_FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            raise ValueError("unexpected layout")
        return data["entries"]
    except (OSError, ValueError) as exc:
        _warn(f"autotune cache {path} is unreadable ({exc}): ignored, measuring again")
        return {}


def cached_choice(path: Path, key: Mapping[str, Any]) -> TrainingChoice | None:
    """The cached choice for ``key``, or None (a stale or malformed entry warns and is ignored)."""
    entry = _read_cache(path).get(_digest(key))
    if entry is None:
        return None
    try:
        if entry["key"] != json.loads(json.dumps(key)):
            raise ValueError("its key does not match this machine and run")
        return TrainingChoice.from_dict(entry["choice"], source="cache")
    except (KeyError, TypeError, ValueError) as exc:
        _warn(f"autotune cache {path}: entry ignored ({exc}), measuring again")
        return None


def store_choice(path: Path, key: Mapping[str, Any], choice: TrainingChoice) -> None:
    """Add ``choice`` to the cache file (atomically); a cache that cannot be written only warns."""
    entries = _read_cache(path)
    entries[_digest(key)] = {
        "key": dict(key),
        "choice": choice.to_dict(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1).encode())
    except OSError as exc:
        _warn(f"autotune cache {path} could not be written ({exc}); the choice is used but not remembered")


# -- the decision ----------------------------------------------------------------------------------


def _cuda_choice(amp: str, channels_last: bool | str, compile: bool | str, device: torch.device) -> TrainingChoice:
    resolved = ("bf16" if cuda_bf16_native(device) else "fp16") if amp == "auto" else amp
    explicit = "auto" not in (amp, channels_last, compile)
    return TrainingChoice(
        resolved,
        True if channels_last == "auto" else bool(channels_last),
        False if compile == "auto" else bool(compile),
        "explicit" if explicit else "cuda",
    )


def _with_fast_ops(choice: TrainingChoice, fast_ops: bool) -> TrainingChoice:
    return dataclasses.replace(choice, fast_ops=fast_ops)


def choose(
    amp: str,
    channels_last: bool | str,
    compile: bool | str,
    device: torch.device,
    num_classes: int,
    cfg: DABNetConfig,
    crop: tuple[int, int],
    batch: int,
    threads: int,
    log: Callable[[str], None] = lambda _m: None,
    use_cache: bool = True,
    timer: StepTimer | None = None,
    bf16_units: bool | None = None,
    grad_error: Callable[[], float] | None = None,
    fast_ops: bool = False,
    bn_prelu: bool = False,
) -> TrainingChoice:
    """Resolve the recipe's ``amp`` / ``channels_last`` / ``compile`` (each possibly ``"auto"``) for a
    run of ``cfg`` with ``num_classes`` classes at ``crop`` (H, W) and per-process ``batch`` on
    ``device`` with ``threads`` intra-op threads. ``timer``, ``bf16_units`` and ``grad_error``
    replace the measurements (tests). ``fast_ops``: whether the run swaps in
    :mod:`dabnet_lib.model.fast_ops` (resolved by the caller; timed that way and recorded in the choice);
    ``bn_prelu``: and their fused BN+PReLU (the recipe's ``fused_bn_prelu``; timed that way)."""
    if device.type == "cuda":
        return _with_fast_ops(_cuda_choice(amp, channels_last, compile, device), fast_ops)
    if "auto" not in (amp, channels_last, compile):
        return TrainingChoice(amp, bool(channels_last), bool(compile), "explicit", fast_ops=fast_ops)
    units = has_bf16_units() if bf16_units is None else bf16_units
    probe = grad_error or (lambda: bf16_channels_last_grad_error("cpu"))
    valid, refused = candidate_space(amp, channels_last, compile, units, probe)
    if len(valid) == 1:
        c = valid[0]
        return TrainingChoice(c.amp, c.channels_last, c.compile, "rule", (*refused, _row(c, "ok")), fast_ops=fast_ops)
    key = cache_key(valid, num_classes, cfg, crop, batch, threads, fast_ops, bn_prelu)
    path = cache_dir() / "autotune.json"
    if use_cache:
        hit = cached_choice(path, key)
        if hit is not None:
            return hit
    log(
        f"autotune: measuring {len(valid)} ways to train at {crop[0]}x{crop[1]}, batch {batch}, {threads} threads "
        f"(once per machine; cached in {path})"
    )
    start = time.perf_counter()
    timing = timer or StepTimer(num_classes, cfg, crop, batch, fast_ops, bn_prelu)
    rows = measure(valid, timing, log)
    best = pick(rows)
    if best is None:
        raise RuntimeError(
            "autotune: no way to train worked on this machine: "
            + "; ".join(f"{r['label']}: {r['reason']}" for r in rows)
        )
    choice = TrainingChoice(
        best.amp,
        best.channels_last,
        best.compile,
        "measured",
        tuple(refused + rows),
        time.perf_counter() - start,
        key,
        fast_ops,
    )
    share = timing.cpu_share()
    if share is not None and share < BUSY_CPU_SHARE:
        log(
            f"autotune: the machine was busy while timing (this process ran {share:.0%} of its {threads} threads' "
            "time): the choice is used for this run but not cached; it is measured again next time"
        )
    elif use_cache:
        store_choice(path, key, choice)
    return choice


def choice_lines(choice: Mapping[str, Any]) -> list[str]:
    """:meth:`TrainingChoice.describe` of a stored choice (``summary.json``'s ``training_choice``)."""
    return TrainingChoice.from_dict(choice).describe()
