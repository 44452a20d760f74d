#!/usr/bin/env python
"""`make gpu-check`: the one prepared check for the day a machine with a CUDA GPU is at hand (about 8 min).

    python scripts/gpu_check.py [--data-root data/camvid] [--out runs/gpu_check] [--iters 300]

1. prints the GPU, driver, CUDA, cuDNN and torch versions (and whether bf16 is native);
2. runs the tests marked ``gpu`` (pytest -m gpu, with DABNET_GPU_TESTS=1 so the suite does not hide the GPU);
3. trains ``--iters`` iterations of the ``paper`` CamVid recipe with AMP on the GPU (amp=auto) and checks
   that the loss falls, that no step was skipped, that every weight is finite;
4. runs ``dabnet test`` on that checkpoint (CamVid test split, on the GPU);
5. runs ``dabnet fps 512,1024 --device cuda`` and ``dabnet fps 360,480 --device cuda`` (parity must hold);
6. with >= 2 GPUs: a 2-process ``torchrun`` smoke training (nccl), both ranks ending with equal weights;
7. writes one JSON summary, atomically, to ``<out>/summary.json``; exit 0 when every step passed, else 1.

Without a CUDA device it stops at once: "gpu-check: no CUDA device ...", exit 2.

UNVERIFIED until a GPU run: steps 1-7 have never run on a GPU (this project had none); only the refusal
without CUDA is tested (tests/test_gpu_check.py). The step timeouts assume a current datacenter GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Seconds each step may take (the whole check aims at about 8 minutes on one current GPU).
TIMEOUTS = {"gpu_tests": 150, "train": 180, "test": 60, "fps": 150, "torchrun": 120}


def _versions() -> dict[str, Any]:
    import torch

    from dabnet_lib.devices import cuda_bf16_native, gpu_description

    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        driver = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        driver = "unknown (nvidia-smi not found)"
    return {
        "gpu": gpu_description(0),
        "gpus": torch.cuda.device_count(),
        "driver": driver,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "bf16_native": cuda_bf16_native(0),
        "python": sys.version.split()[0],
    }


def _run(cmd: list[str], timeout: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in the repo; returns rc (124 on timeout), seconds, stdout and the output's last lines."""
    start = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = 124, exc.stdout or "", (exc.stderr or "") + f"\ntimed out after {timeout} s"
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    tail = (out + err).strip().splitlines()[-15:]
    print("\n".join("  " + line for line in tail), flush=True)
    return {
        "cmd": " ".join(cmd),
        "rc": rc,
        "seconds": round(time.perf_counter() - start, 1),
        "stdout": out,
        "tail": tail,
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dabnet_lib.cli", *args]


def _check_training(run_dir: Path) -> dict[str, Any]:
    """Falling loss, no skipped step and finite weights in a finished run folder."""
    import torch

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    skipped = sum(r.get("skipped_steps", 0) for r in rows)
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]
    finite = all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    falling = len(losses) >= 2 and all(math.isfinite(v) for v in losses) and losses[-1] < 0.8 * losses[0]
    return {
        "ok": falling and finite and skipped == 0,
        "losses": losses,
        "skipped_steps": skipped,
        "weights_finite": finite,
        "loss_fell_20pct": falling,
        "val_miou": next((r["val_miou"] for r in reversed(rows) if r.get("val_miou") is not None), None),
    }


def _check_fps(step: dict[str, Any]) -> dict[str, Any]:
    """Every device variant built, timed and within its parity tolerance."""
    from dabnet_lib.deploy.gpu_timing import DEVICE_VARIANTS

    rows = json.loads(step["stdout"].strip().splitlines()[-1]) if step["rc"] in (0, 1) and step["stdout"] else []
    by = {r["variant"]: {k: r.get(k) for k in ("status", "ms", "fps", "speedup", "parity", "error")} for r in rows}
    good = [r["variant"] for r in rows if r["status"] == "ok" and r["parity_ok"]]
    return {"ok": step["rc"] == 0 and set(good) == set(DEVICE_VARIANTS), "rows": by}


def _check_torchrun(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    digests = summary["rank_weight_digests"]
    return {"ok": summary["world_size"] == 2 and len(set(digests)) == 1, "rank_weight_digests": digests}


def _step(
    summary: dict[str, Any], name: str, step: dict[str, Any], check: Callable[[], dict[str, Any]] | None = None
) -> None:
    """Record ``step`` (and its ``check``, when the command succeeded) under ``summary["steps"][name]``."""
    result = {k: v for k, v in step.items() if k != "stdout"}
    result["ok"] = step["rc"] == 0
    if check is not None and step["rc"] in (0, 1):
        try:
            result.update(check())
        except (OSError, ValueError, KeyError, IndexError) as exc:
            result.update(ok=False, check_error=f"{type(exc).__name__}: {exc}")
    summary["steps"][name] = result
    print(f"== {name}: {'PASS' if result['ok'] else 'FAIL'} ({result['seconds']} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data/camvid", help="CamVid folder (default data/camvid; make data)")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for the runs and summary.json")
    parser.add_argument("--iters", type=int, default=300, help="training iterations of the paper recipe (300)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu-check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run it on a machine with an "
            "NVIDIA GPU and the CUDA build of torch 2.13.0",
            file=sys.stderr,
        )
        return 2
    from dabnet_lib.atomic_files import write_bytes_atomic

    data, out = Path(args.data_root), Path(args.out)
    if not (data / "train").is_dir():
        print(f"gpu-check: no CamVid at {data}: run `make data` or pass --data-root DIR", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {"versions": _versions(), "steps": {}}
    print(json.dumps(summary["versions"], indent=2), flush=True)

    gpu_env = {"DABNET_GPU_TESTS": "1"}
    _step(
        summary,
        "gpu_tests",
        _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests/test_gpu.py"], TIMEOUTS["gpu_tests"], gpu_env),
    )
    train_dir = out / "train"
    workers = str(max(2, min(8, (os.cpu_count() or 2) // 2)))
    train = _run(
        _cli(
            "train",
            "--dataset",
            "camvid",
            "--profile",
            "paper",
            "--data-root",
            str(data),
            "--out",
            str(train_dir),
            "--device",
            "cuda",
            "--quiet",
            "--set",
            f"max_iters={args.iters}",
            "--set",
            "amp=auto",
            "--set",
            "save_every=0",
            "--set",
            f"num_workers={workers}",
        ),
        TIMEOUTS["train"],
    )
    _step(summary, "train_paper_amp", train, lambda: _check_training(train_dir))
    if (train_dir / "last.pt").is_file():
        test = _run(
            _cli(
                "test",
                "--checkpoint",
                str(train_dir / "last.pt"),
                "--data-root",
                str(data),
                "--split",
                "test",
                "--device",
                "cuda",
                "--json",
                "--quiet",
            ),
            TIMEOUTS["test"],
        )
        _step(summary, "dabnet_test", test, lambda: {"miou": json.loads(test["stdout"].splitlines()[-1])["miou"]})
    for size in ("512,1024", "360,480"):
        fps = _run(_cli("fps", size, "--device", "cuda", "--json", "--quiet"), TIMEOUTS["fps"])
        _step(summary, f"fps_{size.replace(',', 'x')}", fps, lambda fps=fps: _check_fps(fps))
    if torch.cuda.device_count() >= 2:
        ddp_dir = out / "torchrun"
        ddp = _run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "dabnet_lib.cli",
                "train",
                "--profile",
                "smoke",
                "--data-root",
                str(data),
                "--out",
                str(ddp_dir),
                "--device",
                "cuda",
                "--quiet",
                "--set",
                "save_every=0",
            ],
            TIMEOUTS["torchrun"],
        )
        _step(summary, "torchrun_2_gpus", ddp, lambda: _check_torchrun(ddp_dir))
    else:
        summary["steps"]["torchrun_2_gpus"] = {"ok": None, "skipped": "fewer than 2 GPUs"}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["ok"] = all(s["ok"] is not False for s in summary["steps"].values())
    path = out / "summary.json"
    write_bytes_atomic(path, (json.dumps(summary, indent=2) + "\n").encode())
    print(f"gpu-check {'PASSED' if summary['ok'] else 'FAILED'} in {summary['seconds']} s; summary: {path}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
