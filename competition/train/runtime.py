"""Where a training process runs and what it carries between runs: the rank and device
(torchrun/DDP), cuDNN settings, the precision a resumed run must keep, the RNG states saved
in last.pt, and the collectives that keep every rank in step."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from competition.errors import InputError
from competition.model import checkpoint, devices
from competition.model.precision import PRECISION, amp_dtype


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among `world` processes and its device."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def runtime(device: str = "auto") -> Runtime:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: join the process group (nccl on CUDA, else
    gloo), each rank on GPU LOCAL_RANK. Otherwise one process on the first GPU, or the CPU.
    `device`: --device auto | cuda | cpu (devices.resolve: auto refuses an NVIDIA GPU that
    torch cannot use, in one line, as cuda does without CUDA)."""
    kind = devices.resolve(device)
    if "RANK" not in os.environ:
        return Runtime(device=torch.device(kind))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, device)


def resume_dtype(saved: str, device: torch.device, path: Path) -> torch.dtype | None:
    """The autocast dtype for resuming a run trained in `saved` precision (bf16, fp16 or fp32,
    as recorded in last.pt) on `device`: the same precision, or an InputError when this
    device cannot run it (bf16 runs keep no loss scale, fp16 runs need theirs: switching
    precision mid-run is a different run)."""
    wanted = {v: k for k, v in PRECISION.items()}[saved]
    if wanted is None:
        return None
    if device.type != "cuda":
        raise InputError(f"{path}: the run trained with {saved} mixed precision on a GPU; "
                         f"{device.type} has no {saved} autocast here: resume it on a GPU")
    if wanted == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(f"{path}: the run trained in bf16, and {torch.cuda.get_device_name(device)}"
                         f" (compute {major}.{minor}) has no native bf16 (fp16 would need a loss "
                         "scale the run never had): resume it on an Ampere or later GPU, or start "
                         "a new run here")
    return wanted


def saved_precision(state: dict, saved, device: torch.device) -> str:
    """The precision a last.pt (of config `saved`) was trained in. Before it was recorded, an
    fp16 run is the one whose GradScaler state is not empty; any other ran in bf16 or fp32,
    taken as what `device` chooses for its amp (fp32 on the CPU) where that is not fp16."""
    if "precision" in state:
        return state["precision"]
    if state.get("scaler"):
        return "fp16"
    chosen = amp_dtype(saved.amp, device)
    return "bf16" if chosen == torch.float16 else PRECISION[chosen]


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning: every training batch has the crop's size and every validation batch
    256x1600, so the fastest algorithm for each is searched once and reused."""
    torch.backends.cudnn.benchmark = device.type == "cuda"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile's wrapper and DDP, whose state_dict keys are
    those of from_config's model (no `_orig_mod.` or `module.` prefix)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def same_on_every_rank(module: torch.nn.Module, rt) -> None:
    """Broadcast rank 0's parameters and buffers of `module` to every rank. Under DDP each
    rank updates its own BatchNorm statistics (DDP only broadcasts rank 0's at the start of a
    forward) and each rank's EMA averages its own; validating without this would score a mix
    of slightly different models, not the one rank 0 saves."""
    if rt.world > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def gather_rows(parts: list[np.ndarray], columns: int, rt) -> np.ndarray:
    """This rank's (n_i, columns) arrays -> every rank's rows, (sum of n, columns), in rank
    order (a collective under DDP: all ranks call it, with or without rows)."""
    rows = np.concatenate(parts) if parts else np.zeros((0, columns))
    if rt.world == 1:
        return rows
    every = [None] * rt.world
    dist.all_gather_object(every, rows)
    return np.concatenate(every)


def gather_rng(rt) -> list[dict]:
    """Every rank's own generator states, in rank order (a collective: all ranks call it)."""
    mine = checkpoint.rng_state(rt.device)
    if rt.world == 1:
        return [mine]
    states = [None] * rt.world
    dist.all_gather_object(states, mine)
    return states


def restore_rng(saved, rt) -> None:
    """This rank's entry of last.pt's RNG states (one dict in checkpoints before per-rank
    states); a rank the saved run did not have keeps the seed's state, said once."""
    states = [saved] if isinstance(saved, dict) else list(saved)
    if len(states) != rt.world and rt.main:
        print(f"resume: last.pt holds the RNG states of {len(states)} process(es), this run has "
              f"{rt.world}: the random streams (dropout) differ from the original run's")
    if rt.rank < len(states):
        checkpoint.set_rng_state(states[rt.rank], rt.device)
