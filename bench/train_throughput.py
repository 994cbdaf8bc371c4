"""A/B training throughput: A = tunesmith's default SFT-LoRA recipe, B = a plain TRL SFTTrainer with its defaults.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--warmup 3] [--pairs 3] [--batch 4]
        [--data demo,mixed] [--model smollm2-135m-instruct] [--a-set speed.precision=bf16 ...] [--quick]
        [--simulate-avx2]

Both sides get the same base model, rows, batch size, optimizer steps, learning-rate schedule, seed and LoRA
settings (r16/alpha32, tunesmith's default dropout, all-linear). B gets the rows in TRL's conversational prompt/completion form,
so its completion-only loss trains the assistant turn as tunesmith's mask does; the template's newline after
the end-of-turn token, which TRL's completion also trains, is masked in B's labels, so both sides train exactly
the same tokens (checked per run: "trained tokens the same"). Every run is a fresh process; A and B alternate, the
first of each pair swapping, and the first `--warmup` optimizer steps are not counted. Reported per run:
non-padding tokens/s (the real tokens of the rows each step consumed, counted in the collator the same way for
both), time per step, peak memory (process RSS on CPU, torch.cuda.max_memory_allocated on CUDA) after training
and after the final evaluation, the loss per step, and on CUDA the MFU. The load average is printed next to
every run: the machine is shared, so figures are noisy. The hardware line names the CPU, its flags that matter
(AVX2, AVX-512, AVX512-BF16, AMX), the caps in force, threads and the torch/oneDNN versions; each run measures the
1024x1024 matmul rate in fp32 and bf16 before training, and the achieved fraction of a side is its FLOPs
(4N per token: LoRA, forward 2N + input-gradient backward 2N, N = the base's parameters) x tokens/s / the matmul
rate of the precision it ran. --b-fp32 trains B without TRL's bf16 default (bf16=False): on a CPU without bf16
units that default is emulated, so the fair baseline there is plain TRL in fp32. --simulate-avx2 runs both sides with oneDNN, MKL and torch's own kernels capped at
AVX2 (train/hardware.py): on a CPU with bf16 units, the class of CPUs without them (simulated, and labelled so).
Results (JSON, loss-curve PNG) go to --out, by default
a new folder per run under runs/bench/train_throughput/; a folder holding other files, or an earlier run of both
sides, is refused rather than written over.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunesmith import allocator
from tunesmith.train.hardware import SIMULATED_AVX2

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "tunesmith" / "demo" / "data"
LR, MAX_LENGTH, SEED = 1e-3, 1024, 42
# Dense bf16 tensor-core peak TFLOPs by GPU name (vendor datasheets, no sparsity).
# oneDNN, MKL and torch's own kernels capped at AVX2 (set in the children's environment: they apply at import)
SIMULATED = SIMULATED_AVX2
# The issue's targets for A against B: tokens/s ratio by data set, peak memory ratio, final loss deviation.
TARGETS = {"demo": 1.5, "mixed": 2.0, "memory": 0.6, "loss": 0.02}
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "4090": 165.0, "A10": 125.0}


def mixed_rows(n: int, seed: int = 0) -> list[dict]:
    """Demo rows whose user turn carries 0-5 earlier messages of the thread: prompts from ~150 to ~900 tokens."""
    base = [json.loads(line) for line in (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = json.loads(json.dumps(base[i % len(base)]))
        earlier = [rng.choice(base)["messages"][1]["content"] for _ in range(rng.choice([0, 0, 0, 1, 2, 3, 5]))]
        if earlier:
            thread = "Earlier in this thread:\n" + "\n---\n".join(earlier)
            row["messages"][1]["content"] = thread + "\n---\nLatest:\n" + row["messages"][1]["content"]
        rows.append(row)
    return rows


def write_data(kind: str, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "demo":
        return DEMO / "train.jsonl", DEMO / "eval.jsonl"
    for name, rows in (("train", mixed_rows(400, 1)), ("eval", mixed_rows(60, 2))):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder / "train.jsonl", folder / "eval.jsonl"


class Counting:
    """Wraps a data collator: counts the real tokens of every row it batches, before any padding."""

    def __init__(self, collate):
        self.collate, self.tokens, self.trained = collate, 0, []

    def __call__(self, features):
        self.tokens += sum(len(f["input_ids"]) for f in features)
        self.trained += [sum(1 for label in f["labels"] if label != -100) for f in features]
        return self.collate(features)


def clock(counter: Counting):
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Seconds and tokens between consecutive optimizer-step ends (data loading included), and the loss."""

        def __init__(self):
            self.seconds, self.tokens, self.loss, self.last, self.seen = [], [], {}, 0.0, 0

        def _now(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kw):
            self.last = self._now()

        def on_step_end(self, args, state, control, **kw):
            now = self._now()
            self.seconds.append(now - self.last)
            self.tokens.append(counter.tokens - self.seen)
            self.last, self.seen = now, counter.tokens

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss[state.global_step] = float(logs["loss"])

    return Clock()


def trainer_a(model: str, train: Path, evaluation: Path, steps: int, batch: int, sets: list[str], out: Path):
    """tunesmith's default recipe, built exactly as `tunesmith train` builds it."""
    import yaml

    from tunesmith.config import load_recipe
    from tunesmith.train import sft

    recipe = {
        "name": "bench",
        "model": {"base": model},
        "data": {"train": [str(train)], "eval": str(evaluation), "max_length": MAX_LENGTH},
        "adapter": {"r": 16, "alpha": 32},
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "learning_rate": LR,
            "logging_steps": 1,
            "save_steps": 10_000,
            "seed": SEED,
        },
        "output_dir": str(out / "run"),
    }
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    built = sft.build(load_recipe(out / "recipe.yaml", sets), force=True)
    return built.trainer, built.speed.model_dump()


def trainer_b(model: str, train: Path, evaluation: Path, steps: int, batch: int, out: Path, fp32: bool = False):
    """A plain TRL SFTTrainer with its defaults; same LoRA settings, schedule, seed and loss mask. fp32: TRL's bf16
    default turned off (bf16=False), what a user of a CPU without bf16 units does once bf16 autocast crawls."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    def rows(path: Path):
        convs = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in convs])

    args = SFTConfig(
        output_dir=str(out / "b"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        max_length=MAX_LENGTH,
        disable_tqdm=True,
        # TRL defaults to bf16, which transformers refuses without CUDA unless told the run is on CPU.
        use_cpu=not torch.cuda.is_available(),
        **({"bf16": False} if fp32 else {}),
    )
    from tunesmith.config import AdapterSection

    dropout = AdapterSection().dropout  # tunesmith's default, which A trains with
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows(train), eval_dataset=rows(evaluation), peft_config=lora)
    # TRL's conversational completion ends with the chat template's newline after the end-of-turn token, and trains
    # it: one easy token per row that tunesmith does not train (generation stops at the end-of-turn token). Left in,
    # it lowers B's mean loss by ~1/75 on these rows (~74 trained tokens each); masked, both sides train exactly the
    # same tokens (checked per run).
    eos = trainer.processing_class.eos_token_id

    def same_mask(row):
        labels = list(row["labels"])
        for i in range(1, len(labels)):
            if labels[i - 1] == eos and labels[i] != -100:
                labels[i] = -100
        return {"labels": labels}

    trainer.train_dataset = trainer.train_dataset.map(same_mask)
    trainer.eval_dataset = trainer.eval_dataset.map(same_mask)
    return trainer, {}


def probe_rates() -> dict:
    """This process's 1024x1024 matmul rates (GFLOP/s, 0.5 s each) and its hardware line, measured before training."""
    from tunesmith.train import hardware

    return {
        "gemm_gflops": {dt: round(hardware.gemm_gflops(dt, seconds=0.5), 2) for dt in ("float32", "bfloat16")},
        "hardware": hardware.describe(),
    }


def peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(ns: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; writes its figures as JSON to ns.result. The run's own output
    (A's run folder, B's trainer folder) goes to a scratch folder removed at the end."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{ns.child}-") as scratch:
        measure(ns, Path(scratch))


def measure(ns: argparse.Namespace, out: Path) -> None:
    import torch

    train, evaluation = Path(ns.train), Path(ns.eval)
    total = ns.warmup + ns.steps
    probes = probe_rates()
    if ns.child == "A":
        trainer, speed = trainer_a(ns.model, train, evaluation, total, ns.batch, ns.a_set, out)
    else:
        trainer, speed = trainer_b(ns.model, train, evaluation, total, ns.batch, out, ns.b_fp32)
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    watch = clock(counter)
    trainer.add_callback(watch)
    trainer.train()
    peak_train, trained = peak_mb(), list(counter.trained)
    trainer.evaluate()
    seconds, tokens = watch.seconds[ns.warmup :], watch.tokens[ns.warmup :]
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    n_params = sum(p.numel() for p in base.parameters())
    bf16 = bool(trainer.args.bf16)  # A: tunesmith's one precision decision; B: TRL's default (bf16 autocast)
    result = {
        "side": ns.child,
        "speed": speed,
        "precision": "bf16 autocast" if bf16 else "fp32",
        **probes,
        "tokens_per_s": sum(tokens) / sum(seconds),
        "step_seconds": seconds,
        "step_tokens": tokens,
        "s_per_step": sum(seconds) / len(seconds),
        # trained (label) tokens of each row the optimizer steps consumed, in order; the data loader's rows fetched
        # ahead of the last step are cut
        "trained_tokens": trained[: total * ns.batch],
        "peak_train_mb": peak_train,
        "peak_mb": peak_mb(),
        "loss": watch.loss,
        "counted_steps": len(seconds),
        "params": n_params,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "allocator": allocator.active(),
    }
    result["flops_per_token"] = f"4N, N={n_params}"  # LoRA: forward 2N + input-gradient backward 2N; full: 6N
    if torch.cuda.is_available():
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in result["device"]), None)
        result["mfu"] = result["tokens_per_s"] * 4 * n_params / (peak * 1e12) if peak else None
    else:  # the share of this CPU's measured matmul rate, in the precision the side multiplied in
        rate = probes["gemm_gflops"]["bfloat16" if bf16 else "float32"]
        result["achieved"] = result["tokens_per_s"] * 4 * n_params / (rate * 1e9)
    Path(ns.result).write_text(json.dumps(result), encoding="utf-8")


def run_one(side: str, kind: str, train: Path, evaluation: Path, ns: argparse.Namespace, out: Path, i: int) -> dict:
    result = out / f"{kind}-{side}-{i}.json"
    load = os.getloadavg()[0]
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--train",
        str(train),
        "--eval",
        str(evaluation),
        "--result",
        str(result),
        "--model",
        ns.model,
        "--steps",
        str(ns.steps),
        "--warmup",
        str(ns.warmup),
        "--batch",
        str(ns.batch),
    ]
    cmd += [arg for s in ns.a_set for arg in ("--a-set", s)] + ["--b-fp32"] * ns.b_fp32
    started = time.time()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(SIMULATED if ns.simulate_avx2 else {})}
    if side == "A":  # what `tunesmith train` runs on: tcmalloc or jemalloc preloaded where installed (allocator.py)
        env = allocator.preload_env(env, allocator.find())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{side} run failed:\n{proc.stderr[-4000:]}")
    data = json.loads(result.read_text(encoding="utf-8"))
    data.update(load_before=load, wall_s=time.time() - started)
    rates = data["gemm_gflops"]
    achieved = f"  achieved {data['achieved']:.1%}" if data.get("achieved") is not None else ""
    print(
        f"  {kind} pair {i} {side} ({data['precision']}, {data.get('allocator', 'system')}): {data['tokens_per_s']:7.1f} tok/s  {data['s_per_step']:.2f} s/step  "
        f"steps {min(data['step_seconds']):.2f}-{max(data['step_seconds']):.2f} s  peak {data['peak_mb']:6.0f} MB (train {data['peak_train_mb']:.0f})  load {load:.2f}{achieved}  "
        f"[matmul fp32 {rates['float32']:.1f}, bf16 {rates['bfloat16']:.1f} GFLOP/s]",
        flush=True,
    )
    return data


def final_loss(loss: dict) -> float:
    last = sorted(loss.items(), key=lambda kv: int(kv[0]))[-5:]
    return sum(v for _, v in last) / len(last)


def fastest_half(run: dict) -> float:
    """Tokens/s over the faster half of a run's counted steps: the steps a busy host slowed least (a shared
    machine's other load can stretch a step by ~1.5x; both sides get the same rows step by step)."""
    steps = sorted(zip(run["step_seconds"], run["step_tokens"]))[: max(1, len(run["step_seconds"]) // 2)]
    return sum(t for _, t in steps) / sum(s for s, _ in steps)


def report(kind: str, pairs: list[tuple[dict, dict]], out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (a, b) in enumerate(pairs):
        steps = sorted(set(a["loss"]) & set(b["loss"]), key=int)
        dev = max(abs(a["loss"][s] - b["loss"][s]) / b["loss"][s] for s in steps)
        rows.append(
            {
                "pair": i,
                "tok_s_ratio": a["tokens_per_s"] / b["tokens_per_s"],
                "tok_s_ratio_fastest_half": fastest_half(a) / fastest_half(b),
                "mem_ratio": a["peak_mb"] / b["peak_mb"],
                "step_ratio": a["s_per_step"] / b["s_per_step"],
                "max_loss_dev": dev,
                "final_loss_a": final_loss(a["loss"]),
                "final_loss_b": final_loss(b["loss"]),
                "same_trained_tokens": a.get("trained_tokens") == b.get("trained_tokens"),
            }
        )
        for side, r, style in (("A tunesmith", a, "-"), ("B TRL", b, "--")):
            xs = sorted(r["loss"], key=int)
            ax.plot([int(x) for x in xs], [r["loss"][x] for x in xs], style, color=f"C{i}", label=f"{side} (pair {i})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{kind}: max relative deviation {max(r['max_loss_dev'] for r in rows):.1%}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"loss-{kind}.png", dpi=110)
    plt.close(fig)
    for r, (a, b) in zip(rows, pairs):
        loss_dev = (r["final_loss_a"] - r["final_loss_b"]) / r["final_loss_b"]
        r["targets_met"] = (
            r["tok_s_ratio"] >= TARGETS.get(kind, 1.5)
            and r["mem_ratio"] <= TARGETS["memory"]
            and abs(loss_dev) <= TARGETS["loss"]
        )
        print(
            f"  {kind} pair {r['pair']}: A/B tokens/s {r['tok_s_ratio']:.2f}x "
            f"(fastest half of each side's steps {r['tok_s_ratio_fastest_half']:.2f}x)  memory {r['mem_ratio']:.2f}x  "
            f"time/step {r['step_ratio']:.2f}x  "
            f"final loss A {r['final_loss_a']:.4f} B {r['final_loss_b']:.4f} ({loss_dev:+.1%})  max loss deviation {r['max_loss_dev']:.1%}  "
            f"trained tokens {'the same' if r['same_trained_tokens'] else 'DIFFER'}  "
            f"A {a['precision']}, B {b['precision']}  "
            f"targets (>= {TARGETS.get(kind, 1.5)}x, <= {TARGETS['memory']}x, loss within {TARGETS['loss']:.0%}) "
            f"{'met' if r['targets_met'] else 'NOT met'}"
        )
    return {"pairs": rows}


def hardware_in_child(simulate: bool) -> dict:
    """describe() and its one-line form, from a fresh process with the caps the runs get (they apply at import)."""
    code = (
        "import json; from tunesmith.train import hardware as h; d = h.describe(); d['line'] = h.hardware_line(d); "
        "print(json.dumps(d))"
    )
    env = {**os.environ, **(SIMULATED if simulate else {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out)


MARK = ".train_throughput"  # in every --out this script made


def claim(out: Path, sides: str) -> Path:
    """--out for this run: a new or empty folder, or (with --sides naming one side) a folder an earlier run of this
    script made, whose other side it reads and whose runs of the named side it replaces. A folder holding anyone
    else's files, or an earlier run's results for a run of both sides, is refused: nothing there is written over."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARK).exists():
            sys.exit(f"{out} holds files this benchmark did not write: choose another --out")
        if {"A", "B"} <= set(sides.split(",")):
            sys.exit(f"{out} holds an earlier benchmark run: choose another --out, or rerun one side there with --sides")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).touch()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=20, help="counted optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps run first and not counted")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--data", default="demo,mixed", help="comma-separated: demo, mixed")
    p.add_argument("--a-set", action="append", default=[], help="recipe override for A, e.g. speed.precision=bf16")
    p.add_argument(
        "--b-fp32",
        action="store_true",
        help="B with TRL's bf16 default off (bf16=False): the baseline on a CPU without bf16 units, where TRL's bf16 "
        "autocast runs emulated (about 1 token/s under --simulate-avx2)",
    )
    p.add_argument("--sides", default="A,B", help="sides to run; the other is read from an earlier run's JSON in --out")
    p.add_argument("--quick", action="store_true", help="8 counted steps, 2 warm-up, 1 pair: a smoke test, not a figure")
    p.add_argument(
        "--simulate-avx2",
        action="store_true",
        help="cap oneDNN, MKL and torch's kernels at AVX2 in both sides: the class of CPUs without bf16 units (simulated)",
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "runs" / "bench" / "train_throughput" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())),
        help="results folder: new, or with --sides an earlier run's (default: a new one per run under runs/bench)",
    )
    p.add_argument("--child", choices=["A", "B"], help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--eval", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.child:
        return child(ns)
    if ns.quick:
        ns.steps, ns.warmup, ns.pairs = 8, 2, 1
    out = claim(Path(ns.out).resolve(), ns.sides)  # the children run elsewhere: data paths must be absolute
    from tunesmith import models

    ns.model = models.resolve_base(ns.model)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    hardware = hardware_in_child(ns.simulate_avx2)
    print(f"hardware: {hardware['line']}", flush=True)
    summary: dict = {"args": vars(ns), "cpu_count": os.cpu_count(), "started": started, "hardware": hardware}
    for kind in ns.data.split(","):
        train, evaluation = write_data(kind, out / "data" / kind)
        print(f"{kind}: {ns.pairs} pairs x (A, B), {ns.warmup} warm-up + {ns.steps} counted steps, batch {ns.batch}", flush=True)
        pairs = []
        for i in range(ns.pairs):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            got = {
                side: run_one(side, kind, train, evaluation, ns, out, i)
                if side in ns.sides
                else json.loads((out / f"{kind}-{side}-{i}.json").read_text(encoding="utf-8"))
                for side in order
            }
            pairs.append((got["A"], got["B"]))
        summary[kind] = {"runs": pairs, **report(kind, pairs, out)}
    (out / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"results: {out / 'results.json'}; loss curves: {out}/loss-*.png")


if __name__ == "__main__":
    main()
