"""Which rank this process is, and its device, when launched as several (torchrun / accelerate launch).

Shared by the lmms-eval model class and the sweep; imports no lmms-eval (the sweep calls it
before lmms-eval is loaded, and lmms-eval's model registry imports the plugin).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def join_process_group() -> tuple[int, int]:
    """(rank, world_size) of this process; joins the process group when launched as several.

    torchrun and ``accelerate launch`` set ``WORLD_SIZE``/``RANK``. lmms-eval's CLI has made the
    group before building the model; otherwise accelerate's ``PartialState`` makes it as an
    ``Accelerator`` would (NCCL on GPUs, gloo on CPU; on CUDA it also binds the rank's GPU).
    Its timeout is a day, as lmms-eval's own: ranks may wait long for each other. Once a group
    exists, run lmms-eval's evaluator with its ``torchrun`` backend, as lmms-eval's CLI does
    (on CPU accelerate sees no distributed run and its gathers would not gather).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(timeout=timedelta(hours=24))
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Every rank waits for the others, then the group is destroyed: a process that exits with
    the group alive can abort in the collective library's threads ("terminate called without an
    active exception") and fail the whole launch."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """``auto`` -> this rank's own GPU (``cuda:LOCAL_RANK``) when there is one, else CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
