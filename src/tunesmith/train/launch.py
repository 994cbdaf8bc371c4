"""`tunesmith train RECIPE --nproc P [--nnodes N --node-rank R --main-address HOST:PORT]`: the same command under
`accelerate launch`, P processes on each of N machines.

No launcher of our own: accelerate (torchrun underneath) starts the processes, sets RANK/LOCAL_RANK/WORLD_SIZE and
the rendezvous at the main address; each process runs `python -m tunesmith train RECIPE ...` and the Trainer picks
up the process group. On every machine the same command runs with its own --node-rank. Shipped configs live inside
the package, in tunesmith/accelerate_configs/ (ddp, fsdp, deepspeed_zero2, deepspeed_zero3), so a wheel install has
them; a path to any accelerate YAML works too.

accelerate runs in a small driver process (`python -m tunesmith.train.launch REPORT ARGS`), which is accelerate's
own `launch` command plus one thing: when a rank fails, torch's elastic agent knows its rank and exit code
(ChildFailedError); the driver writes them to REPORT so that this machine's `tunesmith train` can say which rank
of which node failed and how.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError, TunesmithError
from tunesmith.train.dist import rank

SHARDED = ("FSDP", "DEEPSPEED")  # distributed types accelerate applies to GPU process groups only

CONFIG_DIR = Path(__file__).resolve().parents[1] / "accelerate_configs"  # package data (pyproject.toml)
EXIT_DIR = "TUNESMITH_EXIT_DIR"  # a rank that stops with a tunesmith error leaves its exit code here (rank-N)


class LaunchOptionsError(TunesmithError):
    """--nnodes/--node-rank/--main-address/--nproc do not describe a launch: `problems` lists every bad option."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"{len(problems)} problem(s) with the launch options:", *(f"  - {o}: {m}" for o, m in problems)]
        super().__init__(
            "\n".join(lines),
            hint="Run the same command on every node with the same --nnodes, --nproc and --main-address (node 0's "
            "HOST:PORT) and each node's own --node-rank from 0 to N-1 (docs/distributed.md).",
        )


class NodeFailed(RunError):
    """A rank of this machine stopped without a tunesmith error of its own (crashed, killed, or exited non-zero)."""

    def __init__(self, message: str, hint: str, exit_code: int):
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Topology:
    """Where this machine's processes sit in the run: N machines of P processes each, met at HOST:PORT."""

    nnodes: int = 1
    node_rank: int = 0
    nproc: int = 0  # processes on this machine; 0: one per visible GPU, one without GPUs (resolved by `launch`)
    host: str | None = None  # the main node's address; None on one machine
    port: int = 0  # the main node's port; 0 on one machine: a free one

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc

    @property
    def ranks(self) -> range:
        """Global ranks of this machine's processes (node_rank x nproc + local rank)."""
        return range(self.node_rank * self.nproc, (self.node_rank + 1) * self.nproc)

    def where(self) -> str:
        """How a message names this machine: `node 1 of 2` on several machines, nothing on one."""
        return f"node {self.node_rank} of {self.nnodes}" if self.nnodes > 1 else "training"


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (a name, an IPv4 address, or [IPv6]:PORT) -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or (":" in host and not text.strip().startswith("[")):
        raise ValueError(f"expected HOST:PORT (e.g. 10.0.0.1:29500 or [fd00::1]:29500), got {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, got {port!r} in {text!r}")
    return host, int(port)


def topology(nnodes: int = 1, node_rank: int = 0, main_address: str | None = None, nproc: int | None = None) -> Topology | None:
    """Check the launch options together, before anything loads; None when they ask to train in this process.

    nproc: processes per machine (None: not given). Raises LaunchOptionsError listing every bad option.
    """
    problems: list[tuple[str, str]] = []
    if nnodes < 1:
        problems.append(("--nnodes", f"must be at least 1, got {nnodes}"))
    if node_rank < 0 or (nnodes >= 1 and node_rank >= nnodes):
        problems.append(("--node-rank", f"must be from 0 to {max(nnodes, 1) - 1} for {nnodes} node(s), got {node_rank}"))
    host, port = None, 0
    if main_address is not None:
        try:
            host, port = parse_address(main_address)
        except ValueError as exc:
            problems.append(("--main-address", str(exc)))
    elif nnodes > 1:
        problems.append(("--main-address", f"required with --nnodes {nnodes}: HOST:PORT of node 0, reachable from every node"))
    if nproc is not None and nproc < 1:
        problems.append(("--nproc", f"must be at least 1, got {nproc}"))
    elif nnodes == 1 and nproc == 1:
        problems.append(("--nproc", "must be at least 2 on one node (leave it out to train in this process)"))
    elif nnodes == 1 and nproc is None and main_address is not None:
        problems.append(("--main-address", "only used by a launch: add --nproc N, or --nnodes N for several machines"))
    if problems:
        raise LaunchOptionsError(problems)
    if nnodes == 1 and nproc is None:
        return None
    return Topology(nnodes, node_rank, nproc or 0, host, port)


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


def command(topo: Topology, config: Path, child_args: list[str], report: Path) -> list[str]:
    """The `accelerate launch` command line (through the driver) that runs `tunesmith <child_args>` on this machine.

    accelerate's --num_processes counts the processes of every machine; it starts nproc of them here.
    """
    where = ["--main_process_ip", topo.host] if topo.host else []
    return [
        sys.executable,
        "-m",
        "tunesmith.train.launch",
        str(report),
        "--config_file",
        str(config),
        "--num_processes",
        str(topo.world_size),
        "--num_machines",
        str(topo.nnodes),
        "--machine_rank",
        str(topo.node_rank),
        *where,
        "--main_process_port",
        str(topo.port),  # 0 on one machine: a free port, so two runs on one machine do not collide
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


def launch(topo: Topology, config_name: str, child_args: list[str], run_dir: Path | None = None) -> int:
    """Run the training command in this machine's processes; return the exit code.

    The code is rank 0's tunesmith code when it has one; a rank here that stopped without explaining itself
    raises NodeFailed naming it. run_dir: where the newest complete checkpoint is looked up for that message.
    """
    import torch

    config = config_path(config_name)
    env = os.environ.copy()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    topo = topo if topo.nproc else replace(topo, nproc=gpus or 1)
    if not gpus:
        refuse_sharding_on_cpu(config)
        env["ACCELERATE_USE_CPU"] = "true"  # DDP over gloo between CPU processes
    elif gpus < topo.nproc:
        raise RunError(f"--nproc {topo.nproc} but only {gpus} GPU(s) are visible on this machine")
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as tmp:
        env[EXIT_DIR] = tmp
        report = Path(tmp) / "failures.json"
        code = _run(command(topo, config, child_args, report), env)
        if code == 0:
            return 0
        explained = {int(p.name[5:]): int(p.read_text()) for p in Path(tmp).glob("rank-*")}
        failures = json.loads(report.read_text()) if report.exists() else []
    return _outcome(topo, code, explained, failures, run_dir)


def _run(cmd: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(cmd, env=env)
    # Relay SIGTERM (a scheduler's preemption notice) to the launcher, which relays it to every rank;
    # each rank then finishes its step and saves.
    # Ctrl-C reaches the whole process group by itself, so here it only must not end the wait early.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM)),
        signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: None),
    }
    try:
        return proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _outcome(topo: Topology, code: int, explained: dict[int, int], failures: list[dict[str, Any]], run_dir: Path | None) -> int:
    """The exit code of a failed launch, or NodeFailed when a rank here stopped without a tunesmith error."""
    if 0 in explained:
        return explained[0]  # rank 0 printed its error; the others stopped because it did
    unexplained = sorted((f for f in failures if f["rank"] not in explained), key=lambda f: f["timestamp"])
    if not unexplained:  # a rank said why (e.g. it lost its peers), or the launcher itself printed the error
        return explained[min(explained)] if explained else code
    lines = [_describe(f) for f in unexplained]
    first = unexplained[0]["exitcode"]
    raise NodeFailed(
        f"{topo.where()} failed: " + "; ".join(lines),
        hint=_resume_hint(topo, run_dir),
        exit_code=first if first > 0 else 128 - first,  # killed by signal S: 128 + S, as a shell reports it
    )


def _describe(failure: dict[str, Any]) -> str:
    code = failure["exitcode"]
    how = f"was killed by {failure['signal'] or f'signal {-code}'}" if code < 0 else f"exited with code {code}"
    return f"rank {failure['rank']} (local rank {failure['local_rank']}) {how}"


def _resume_hint(topo: Topology, run_dir: Path | None) -> str:
    from tunesmith.train.checkpoints import kept_hint

    again = "on every node, once every node is back" if topo.nnodes > 1 else "here"
    kept = kept_hint(run_dir) + " " if run_dir is not None else ""
    return f"Any error that rank printed is above. {kept}Continue with the same command plus --resume {again}."


def record_exit_code(code: int) -> None:
    """Called by the CLI in a launched process that stops with a tunesmith error: the launcher then knows this rank
    explained itself, and returns rank 0's code."""
    folder = os.environ.get(EXIT_DIR)
    if folder and Path(folder).is_dir():
        Path(folder, f"rank-{rank()}").write_text(str(code))


def _driver(argv: list[str]) -> int:
    """`python -m tunesmith.train.launch REPORT ARGS...`: `accelerate launch ARGS`, recording failed ranks in REPORT."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    report, args = Path(argv[0]), argv[1:]
    try:
        launch_command(launch_command_parser().parse_args(args))
    except ChildFailedError as exc:
        rows = [
            {
                "rank": r,
                "local_rank": f.local_rank,
                "exitcode": f.exitcode,
                "signal": f.signal_name() if f.exitcode < 0 else None,
                "timestamp": f.timestamp,
            }
            for r, f in exc.failures.items()
        ]
        report.write_text(json.dumps(rows))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))
