"""`tunesmith train RECIPE --nproc N`: the same command under `accelerate launch`, one process per device.

No launcher of our own: accelerate (torchrun underneath) starts the processes, sets RANK/WORLD_SIZE and the
rendezvous; each process runs `python -m tunesmith train RECIPE ...` and the Trainer picks up the process group.
Shipped configs live inside the package, in tunesmith/accelerate_configs/ (ddp, fsdp, deepspeed_zero2,
deepspeed_zero3), so a wheel install has them; a path to any accelerate YAML works too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tunesmith.errors import RunError
from tunesmith.train.dist import rank

SHARDED = ("FSDP", "DEEPSPEED")  # distributed types accelerate applies to GPU process groups only

CONFIG_DIR = Path(__file__).resolve().parents[1] / "accelerate_configs"  # package data (pyproject.toml)
EXIT_CODE_FILE = "TUNESMITH_EXIT_CODE_FILE"  # rank 0 writes its TunesmithError exit code here for the launcher


def config_path(name: str) -> Path:
    """A shipped config by name (ddp, fsdp, deepspeed_zero2, deepspeed_zero3) or a path to an accelerate YAML."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path.resolve()
    shipped = CONFIG_DIR / f"{name}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise RunError(f"accelerate config not found: {name}", hint=f"Use one of {names} or a path to an accelerate YAML.")


def command(nproc: int, config: Path, child_args: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `tunesmith <child_args>` in `nproc` processes."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",  # a free port, so two runs on one machine do not collide
        "-m",
        "tunesmith",
        *child_args,
    ]


def distributed_type(config: Path) -> str:
    """The `distributed_type` an accelerate YAML asks for (MULTI_GPU, FSDP, DEEPSPEED, ...)."""
    from accelerate.commands.config.config_args import load_config_from_file

    return str(load_config_from_file(str(config)).distributed_type.value)


def refuse_sharding_on_cpu(config: Path) -> None:
    """FSDP and DeepSpeed need GPUs: on CPU processes accelerate would quietly train plain DDP instead.

    With ACCELERATE_USE_CPU, AcceleratorState sets up a MULTI_CPU (gloo) process group and attaches the FSDP
    plugin only for GPU/accelerator types (accelerate/state.py), and DeepSpeed only when not on CPU: the run
    would print "FSDP" in its config and replicate the whole model per process.
    """
    kind = distributed_type(config)
    if kind in SHARDED:
        raise RunError(
            f"{config.name} asks for {kind}, which accelerate runs on GPUs only; without CUDA the processes would "
            "silently train plain DDP (a full model copy each)",
            hint="Use --accelerate-config ddp on CPU, or run on a machine with GPUs.",
        )


def launch(nproc: int, config_name: str, child_args: list[str]) -> int:
    """Run the training command in `nproc` processes; return the exit code (rank 0's tunesmith code when it has one)."""
    import torch

    if nproc < 2:
        raise RunError("--nproc must be at least 2 (leave it out to train in this process)")
    config = config_path(config_name)
    env = os.environ.copy()
    if not torch.cuda.is_available():
        refuse_sharding_on_cpu(config)
        env["ACCELERATE_USE_CPU"] = "true"  # DDP over gloo between CPU processes
    elif torch.cuda.device_count() < nproc:
        raise RunError(f"--nproc {nproc} but only {torch.cuda.device_count()} GPU(s) are visible")
    fd, code_file = tempfile.mkstemp(prefix="tunesmith-exit-")
    os.close(fd)
    env[EXIT_CODE_FILE] = code_file
    proc = subprocess.Popen(command(nproc, config, child_args), env=env)
    # Relay SIGTERM (a scheduler's preemption notice) to the launcher, which relays it to every rank;
    # each rank then finishes its step and saves.
    # Ctrl-C reaches the whole process group by itself, so here it only must not end the wait early.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM)),
        signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: None),
    }
    try:
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        recorded = Path(code_file).read_text().strip()
        Path(code_file).unlink(missing_ok=True)
    return int(recorded) if code != 0 and recorded.isdigit() else code


def record_exit_code(code: int) -> None:
    """Called by the CLI in a launched process: rank 0 leaves its error's exit code for `launch` to return."""
    path = os.environ.get(EXIT_CODE_FILE)
    if path and rank() == 0:
        Path(path).write_text(str(code))
