"""DDP setup on CUDA, with the CUDA queries mocked: a LOCAL_RANK beyond the visible GPUs is one clear error
naming both numbers, raised before any device is selected or any process group joined."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from dabnet_lib.errors import DabnetError
from dabnet_lib.training.distributed import setup


def test_local_rank_beyond_the_visible_gpus_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*_a, **_k):
        raise AssertionError("called although LOCAL_RANK has no device")

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", must_not_run)
    monkeypatch.setattr(dist, "init_process_group", must_not_run)
    with pytest.raises(
        DabnetError,
        match=r"LOCAL_RANK 2 needs CUDA device 2, but only 2 CUDA device\(s\) are "
        r"visible.*--nproc_per_node=2.*--device cpu",
    ):
        setup(torch.device("cuda"))


def test_a_local_rank_with_a_device_selects_it(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    ctx = setup(torch.device("cuda"))
    assert chosen == [1, "nccl"] and (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend) == (1, 2, 1, "nccl")
