"""Two "nodes" on this machine: two `tunesmith train --nnodes 2` launches that meet on loopback (gloo, DDP on CPU).

Each launch runs one process (--nproc 1), so the two nodes train with the same global ranks, rows and global batch
as one node with --nproc 2; the adapters must agree. Node 1 can be made to fail mid-run, and its writes into the run
folder are recorded, by a `sitecustomize` put on the path of the launched processes only (HOOK below).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import load_recipe
from tunesmith.errors import RunError
from tunesmith.run import load_run
from tunesmith.train import faults, launch, start
from tunesmith.train.callbacks import COMPLETE, STAGING, latest_complete_checkpoint

# Loaded at start-up by every Python process of a launch (PYTHONPATH). FAULT_AT="rank:step:code" makes that rank
# exit with `code` at the end of `step`, as a crashed node would; PAUSE_S makes every rank sleep after each step;
# WRITES_OF="rank:file" records every write that rank's Python code makes under RUN_DIR (audit hooks: open for
# writing, mkdir, rename, remove, rmtree).
HOOK = """
import os, sys

_rank = os.environ.get("RANK")
_fault = os.environ.get("FAULT_AT", "")
if _rank is not None and _fault.split(":")[0] == _rank:
    _step, _code = (int(x) for x in _fault.split(":")[1:])
    from transformers import TrainerCallback
    from tunesmith.train import callbacks as _callbacks

    class _Die(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == _step:
                os._exit(_code)

    _standard = _callbacks.standard_callbacks
    _callbacks.standard_callbacks = lambda recipe, run_dir: _standard(recipe, run_dir) + [_Die()]

if _rank is not None and os.environ.get("PAUSE_S"):  # a pause after every step, so a test can signal mid-run
    import time
    from transformers import TrainerCallback
    from tunesmith.train import callbacks as _callbacks

    class _Pause(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(float(os.environ["PAUSE_S"]))

    _paused = _callbacks.standard_callbacks
    _callbacks.standard_callbacks = lambda recipe, run_dir: _paused(recipe, run_dir) + [_Pause()]

_writes = os.environ.get("WRITES_OF", "")
if _rank is not None and _writes.split(":")[0] == _rank:
    _log, _root = _writes.split(":", 1)[1], os.path.realpath(os.environ["RUN_DIR"])
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def _audit(event, args):
        if event == "open":
            path, mode, flags = args
            if not ((mode and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE)):
                return
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
            path = args[0]
        else:
            return
        if isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.realpath(os.fsdecode(path))
            if full == _root or full.startswith(_root + os.sep):
                with open(_log, "a") as fh:
                    fh.write(event + " " + os.path.relpath(full, _root) + "\\n")

    sys.addaudithook(_audit)
"""


@pytest.mark.parametrize(
    ("options", "problems"),
    [
        ({"nnodes": 0}, ["--nnodes: must be at least 1, got 0"]),
        ({"nnodes": 2, "node_rank": 2, "main_address": "h:1"}, ["--node-rank: must be from 0 to 1 for 2 node(s), got 2"]),
        ({"nnodes": 2, "node_rank": -1, "main_address": "h:1"}, ["--node-rank: must be from 0 to 1"]),
        ({"nnodes": 2}, ["--main-address: required with --nnodes 2"]),
        ({"nnodes": 2, "main_address": "10.0.0.1"}, ["--main-address: expected HOST:PORT"]),
        ({"nnodes": 2, "main_address": ":29500"}, ["--main-address: expected HOST:PORT"]),
        ({"nnodes": 2, "main_address": "fd00::1:29500"}, ["--main-address: expected HOST:PORT"]),  # IPv6 needs [ ]
        ({"nnodes": 2, "main_address": "h:0"}, ["--main-address: the port must be a number from 1 to 65535"]),
        ({"nnodes": 2, "main_address": "h:65536"}, ["--main-address: the port must be a number from 1 to 65535"]),
        ({"nnodes": 2, "main_address": "h:http"}, ["--main-address: the port must be a number"]),
        ({"nnodes": 2, "main_address": "h:1", "nproc": 0}, ["--nproc: must be at least 1, got 0"]),
        ({"nproc": 1}, ["--nproc: must be at least 2 on one node"]),
        ({"main_address": "h:1"}, ["--main-address: only used by a launch"]),
        (
            {"nnodes": 0, "node_rank": -1, "main_address": "h", "nproc": -2},
            ["--nnodes", "--node-rank", "--main-address", "--nproc"],
        ),
    ],
)
def test_launch_options_are_checked_together(options, problems):
    with pytest.raises(launch.LaunchOptionsError) as err:
        launch.topology(**options)
    assert len(err.value.problems) == len(problems)  # every bad option, in one error
    for (option, message), expected in zip(err.value.problems, problems):
        assert f"{option}: {message}".startswith(expected)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("10.0.0.1:29500", "10.0.0.1", 29500), ("node-0.cluster:1", "node-0.cluster", 1), ("[fd00::1]:65535", "fd00::1", 65535)],
)
def test_a_node_is_placed_by_its_options(address, host, port):
    topo = launch.topology(nnodes=3, node_rank=2, main_address=address, nproc=4)
    assert topo == launch.Topology(nnodes=3, node_rank=2, nproc=4, host=host, port=port)
    assert topo.world_size == 12 and list(topo.ranks) == [8, 9, 10, 11] and topo.where() == "node 2 of 3"
    assert launch.topology(nnodes=2, main_address=address).nproc == 0  # one per GPU (1 without), resolved at launch


def test_accelerate_starts_this_nodes_share_of_the_processes(tmp_path):
    """accelerate's own parser and torchrun setup read the command as: 4 processes here, node 1 of 2, meeting at node 0."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    topo = launch.Topology(nnodes=2, node_rank=1, nproc=4, host="10.0.0.1", port=29500)
    cmd = launch.command(topo, launch.config_path("ddp"), ["train", "r.yaml"], tmp_path / "report")
    assert cmd[1:4] == ["-m", "tunesmith.train.launch", str(tmp_path / "report")]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[4:]))
    prepare_multi_gpu_env(args)
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("4", "2", 1)
    assert args.rdzv_endpoint == "10.0.0.1:29500" and args.rdzv_backend == "static"  # the ranks meet at node 0
    assert args.training_script == "tunesmith" and args.training_script_args == ["train", "r.yaml"]


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_configs_launch_each_node_by_itself(name, tmp_path):
    """Without `standard`, accelerate's DeepSpeed multi-node launch defaults to pdsh: ssh from node 0 to a hostfile,
    which is not how tunesmith starts every node (and writes .deepspeed_env into the working folder)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    topo = launch.Topology(nnodes=2, node_rank=1, nproc=8, host="10.0.0.1", port=29500)
    cmd = launch.command(topo, launch.config_path(name), ["train", "r.yaml"], tmp_path / "report")
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[4:]))
    assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"


def test_train_refuses_bad_launch_options_before_reading_the_recipe(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["train", str(tmp_path / "missing.yaml"), "--nnodes", "2", "--node-rank", "5"])
    assert res.exit_code == 1
    said = " ".join(res.output.split())
    assert "2 problem(s) with the launch options" in said and "--node-rank" in said and "--main-address" in said
    assert "missing.yaml" not in said and "Traceback" not in said


FAILED_RANK = {"rank": 3, "local_rank": 1, "exitcode": 7, "signal": None, "timestamp": 2}
KILLED_RANK = {"rank": 2, "local_rank": 0, "exitcode": -9, "signal": "SIGKILL", "timestamp": 1}


def test_a_rank_that_stops_without_explaining_itself_is_named(tmp_path):
    topo = launch.Topology(nnodes=2, node_rank=1, nproc=2, host="h", port=1)
    with pytest.raises(launch.NodeFailed) as err:
        launch._outcome(topo, 1, {}, [FAILED_RANK, KILLED_RANK], tmp_path)
    assert err.value.message == (
        "node 1 of 2 failed: rank 2 (local rank 0) was killed by SIGKILL; rank 3 (local rank 1) exited with code 7"
    )  # the first to fail first
    assert err.value.exit_code == 128 + 9  # as a shell reports a process killed by signal 9
    assert "No complete checkpoint was written yet" in err.value.hint and "--resume on every node" in err.value.hint
    with pytest.raises(launch.NodeFailed) as err:
        launch._outcome(topo, 1, {}, [FAILED_RANK], tmp_path)
    assert err.value.exit_code == 7


def test_a_rank_that_explained_itself_gives_the_exit_code():
    topo = launch.Topology(nnodes=2, node_rank=0, nproc=2, host="h", port=1)
    lost = {**FAILED_RANK, "rank": 1, "exitcode": 69}
    assert launch._outcome(topo, 1, {0: 75, 1: 69}, [lost], None) == 75  # rank 0's code first
    assert launch._outcome(topo, 1, {1: 69}, [lost], None) == 69  # it printed why (lost its peers)
    assert launch._outcome(topo, 1, {}, [], None) == 1  # the launcher itself failed, and said so


def test_ranks_record_their_own_exit_codes(tmp_path, monkeypatch):
    monkeypatch.setenv(launch.EXIT_DIR, str(tmp_path))
    for rank, code in (("0", 75), ("3", 69)):
        monkeypatch.setenv("RANK", rank)
        launch.record_exit_code(code)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"rank-0": "75", "rank-3": "69"}


def test_a_failed_collective_is_a_lost_peer(tmp_path, monkeypatch):
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:8337. GLHF")
    assert faults.peer_lost(gloo, tmp_path) is None  # one process: no peers to lose
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("GROUP_RANK", "1")
    lost = faults.peer_lost(gloo, tmp_path)
    assert isinstance(lost, faults.PeerLost) and lost.exit_code == 69
    assert lost.message.startswith("rank 2 on node 1 lost contact with the other ranks of the run: [../gloo")
    assert "--resume on every node" in lost.hint
    assert isinstance(faults.peer_lost(torch.distributed.DistNetworkError("timed out"), tmp_path), faults.PeerLost)
    assert faults.peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), tmp_path) is None
    assert faults.peer_lost(ValueError("Connection closed by peer"), tmp_path) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path, **extra):
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(hook), **extra}


def _two_nodes(tmp_path, recipes, *args, **env):
    """Start node 0 and node 1 (one recipe path each), wait for both; returns [(exit code, stdout, stderr)]."""
    port = _free_port()
    procs, logs = [], []
    for node, recipe in enumerate(recipes):
        out, err = tmp_path / f"node{node}.out", tmp_path / f"node{node}.err"
        cmd = [sys.executable, "-m", "tunesmith", "train", str(recipe), "--nnodes", "2", "--node-rank", str(node)]
        cmd += ["--main-address", f"127.0.0.1:{port}", "--nproc", "1", *args]
        with open(out, "w") as o, open(err, "w") as e:
            procs.append(subprocess.Popen(cmd, stdout=o, stderr=e, text=True, env=_env(tmp_path, **env)))
        logs.append((out, err))
    codes = [p.wait(timeout=600) for p in procs]
    return [(code, o.read_text(), e.read_text()) for code, (o, e) in zip(codes, logs)]


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _trained_share(run, steps):
    """tokens/s x seconds over the train set's tokens: the share of the set `steps` steps of 2 ranks x 2 rows read."""
    f = run.manifest.figures
    assert f.tokens_per_s * f.train_runtime_s == pytest.approx(
        run.manifest.tokens.train.tokens * steps * 2 * 2 / 24, abs=0.051 * f.train_runtime_s + 0.00051 * f.tokens_per_s
    )  # tokens/s is rounded to 0.1 and the runtime to 1 ms: the product is off by up to 0.05 x one + 0.0005 x the other


def test_two_nodes_train_the_same_adapter_as_one_node_with_two_processes(tiny_recipe):
    path = tiny_recipe(training={"max_steps": 4, "batch_size": 2, "save_steps": 2})
    run_dir = load_recipe(path).run_dir
    writes = path.parent / "node1-writes.log"
    nodes = _two_nodes(path.parent, [path, path], WRITES_OF=f"1:{writes}", RUN_DIR=str(run_dir))
    for code, _, err in nodes:
        assert code == 0, err[-4000:]
    one = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2", "--set", "output_dir=runs/one"],
        capture_output=True,
        text=True,
        env=_env(path.parent),
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-4000:]

    two_nodes, one_node = load_run(run_dir), load_run(load_recipe(path, ["output_dir=runs/one"]).run_dir)
    got, ref = _adapter(two_nodes.dir), _adapter(one_node.dir)
    assert got.keys() == ref.keys()
    for key in ref:
        assert torch.allclose(got[key], ref[key], atol=1e-6), key
    assert any(v.abs().sum() > 0 for k, v in got.items() if "lora_B" in k)  # it trained

    f = two_nodes.manifest.figures
    assert f.world_size == 2 and f.global_step == 4 == one_node.manifest.figures.global_step
    assert f.peak_memory_rank in (0, 1) and f.peak_memory_mb > 0
    _trained_share(two_nodes, steps=4)  # tokens/s counts the rows of both nodes
    assert (two_nodes.dir / "checkpoints" / "checkpoint-4" / "rng_state_1.pth").exists()  # node 1's rank saved its part
    # One summary, from node 0; node 1's process wrote nothing but its part of the staged checkpoints.
    assert "next: tunesmith eval" in nodes[0][1] and "next: tunesmith eval" not in nodes[1][1]
    written = writes.read_text().splitlines()
    assert written and all(line.split(" ", 1)[1].startswith(f"checkpoints/{STAGING}/") for line in written), written


def test_a_failed_node_fails_the_run_and_a_resume_on_both_nodes_finishes_it(tiny_recipe):
    path = tiny_recipe(training={"max_steps": 6, "batch_size": 2, "save_steps": 2})
    run_dir = load_recipe(path).run_dir
    (code0, _, err0), (code1, _, err1) = _two_nodes(path.parent, [path, path], FAULT_AT="1:3:7")

    # Node 1's rank crashed with code 7 after step 3; node 0 lost contact with it and stopped too.
    assert code1 == 7, err1[-3000:]
    assert "node 1 of 2 failed: rank 1 (local rank 0) exited with code 7" in " ".join(err1.split())
    assert code0 == faults.PeerLost.exit_code == 69, err0[-3000:]
    said = " ".join(err0.split())
    assert "rank 0 on node 0 lost contact with the other ranks" in said and "--resume on every node" in said
    assert "checkpoint-2" in said and "checkpoint-2" in " ".join(err1.split())
    assert not (run_dir / "manifest.json").exists() and not (run_dir / "checkpoints" / STAGING).exists()
    assert latest_complete_checkpoint(run_dir / "checkpoints") == run_dir / "checkpoints" / "checkpoint-2"
    assert (run_dir / "checkpoints" / "checkpoint-2" / COMPLETE).exists()

    # The checkpoint holds two ranks' state: resuming it in one process would be another run.
    with pytest.raises(RunError, match="world_size: checkpoint 2, this launch 1"):
        start.prepare_run_dir(load_recipe(path), resume=True)

    for code, _, err in _two_nodes(path.parent, [path, path], "--resume"):
        assert code == 0, err[-4000:]
    run = load_run(run_dir)
    assert run.manifest.resumed_from == str(run_dir / "checkpoints" / "checkpoint-2")
    assert run.manifest.figures.global_step == 6 and run.manifest.figures.world_size == 2
    _trained_share(run, steps=4)  # steps 3-6 in this launch, over its own runtime
    logged = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert logged == [1, 2, 3, 4, 5, 6]  # every step once: what the crashed launch logged after step 2 was dropped


def test_a_node_without_the_shared_run_folder_is_refused(tiny_recipe):
    """Node 1 reads the same recipe from its own disk: the run folder rank 0 writes is not the one it sees."""
    path = tiny_recipe(training={"max_steps": 4})
    other = path.parent / "node1-disk"
    other.mkdir()
    for name in ("recipe.yaml", "train.jsonl", "eval.jsonl"):
        shutil.copy(path.parent / name, other / name)
    nodes = _two_nodes(path.parent, [path, other / "recipe.yaml"])
    for code, _, err in nodes:
        assert code == 1, err[-3000:]
        said = " ".join(err.split())
        assert f"node 1 ({socket.gethostname()}) do(es) not see the run folder" in said
        assert "filesystem every node mounts" in said
    assert f"the run folder {load_recipe(path).run_dir} that rank 0 on node 0 writes" in " ".join(nodes[0][2].split())
    assert not load_recipe(path).run_dir.exists()  # the refused run leaves no folder behind
    assert not load_recipe(other / "recipe.yaml").run_dir.exists()  # node 1 created nothing


def test_a_schedulers_sigterm_to_every_process_of_a_node_still_saves(tiny_recipe):
    """Slurm signals every process of a job step: each rank gets SIGTERM directly and then again from torchrun's agent.
    The second one must not stop the rank before it has finished the step and saved."""
    import signal
    import time

    import psutil

    path = tiny_recipe(training={"max_steps": 40, "batch_size": 2, "save_steps": 2})
    run_dir = load_recipe(path).run_dir
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(path.parent, PAUSE_S="0.5"),
    )
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "checkpoint-2" / COMPLETE).exists():
        assert launcher.poll() is None and time.time() < deadline, "training ended or stalled before checkpoint-2"
        time.sleep(0.1)
    tree = psutil.Process(launcher.pid).children(recursive=True)
    ranks = [p for p in tree if "RANK" in p.environ()]
    assert len(ranks) == 2
    for p in ranks:  # the ranks first, so that the agent's relay is a second SIGTERM they see
        p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    for p in [psutil.Process(launcher.pid), *(p for p in tree if p not in ranks)]:
        p.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == faults.TrainingInterrupted.exit_code == 75, err[-3000:]
    stopped = latest_complete_checkpoint(run_dir / "checkpoints")
    assert stopped is not None and stopped.name != "checkpoint-2"  # the step under way was finished and saved
