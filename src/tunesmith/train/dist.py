"""Where this process stands among the ranks of a `--nproc N` (or `--nnodes N`) run, and the few collectives
tunesmith needs.

The bottom of train/'s dependency chain: dist ← checkpoints ← callbacks ← faults. Every helper is a no-op (or
returns the local value) in a single process, so the same code path serves one process and N.
"""

from __future__ import annotations

import os
from typing import Any

# Kept alive for the life of the process: transformers holds only a weak reference to the DeepSpeed config
# that tells `from_pretrained` to create parameters already partitioned (ZeRO-3).
_ZERO3_CONFIG: Any = None


def rank() -> int:
    """Global rank of this process over every node (0 when not launched by accelerate/torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank of this process on its machine: the index of the GPU it owns."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def node_rank() -> int:
    """Index of this process's machine, 0 to nnodes-1 (torchrun's GROUP_RANK; 0 when not launched)."""
    return int(os.environ.get("GROUP_RANK", "0"))


def world_size() -> int:
    """Number of processes training together, on every node (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the one process that writes run files (run.yaml, manifest, metrics, plots, adapter): global rank 0.

    Not LOCAL_RANK 0: with several nodes on a shared filesystem each node has a local rank 0, and all of them
    writing one run folder would interleave their files.
    """
    return rank() == 0


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if _initialized():
        dist.barrier()


def world_max(value: int, device: Any) -> int:
    """The largest `value` over all ranks, so every rank takes the same decision."""
    import torch
    import torch.distributed as dist

    if not _initialized():
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def world_objects(value: Any) -> list[Any]:
    """`value` (any picklable object) from every rank, in rank order (a one-element list in a single process)."""
    import torch.distributed as dist

    if not _initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def world_values(value: float) -> list[float]:
    """`value` from every rank, in rank order (a one-element list in a single process)."""
    return [float(v) for v in world_objects(value)]


def join() -> Any:
    """Join the process group of a launched run now; returns accelerate's PartialState (a no-op state in one process)."""
    from accelerate import PartialState

    return PartialState()


def param_count(model: Any, trainable_only: bool = False) -> int:
    """Parameters of the whole model, not of this rank's shard.

    FSDP2 parameters are DTensors whose numel() is already the global size; ZeRO-3 leaves an empty local
    tensor and records the real size in `ds_numel`.
    """
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad or not trainable_only)


def prepare() -> Any:
    """Create accelerate's distributed state before the model exists; returns it.

    Under FSDP (`fsdp_cpu_ram_efficient_loading`) `from_pretrained` loads real weights on local rank 0 only and
    leaves the others to be filled when the model is sharded, but only when the process group already exists
    at load time. Under DeepSpeed ZeRO-3 it creates parameters already partitioned, but only when it can see
    the DeepSpeed config. A model loaded before either is a full copy per rank: the memory FSDP/ZeRO-3 exist to
    save. In a single process this is a cheap no-op state.
    """
    state = join()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        global _ZERO3_CONFIG
        from accelerate.utils import DeepSpeedPlugin

        # What TrainingArguments does when it is created; doing it here lets the model be loaded first.
        plugin = DeepSpeedPlugin()
        plugin.set_deepspeed_weakref()
        _ZERO3_CONFIG = plugin
    return state
