"""One training step (forward, backward, AdamW) of SmolLM2 + LoRA under each speed lever, interleaved, in one process.

    .venv/bin/python bench/train_levers.py [--rounds 3] [--batch 4] [--data demo|mixed]

Cheaper than the A/B benchmark (no fresh processes, no memory figures): it decides which levers pay on this
machine. Each round runs every configuration once on the same rows; the median seconds per step is reported
with the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import DEMO, mixed_rows  # noqa: E402

CONFIGS = {  # name: (padding_free, labelled_logits, bf16, fused AdamW)
    "plain (padded, all positions, fp32)": (False, False, False, False),
    "+ labelled logits": (False, True, False, False),
    "+ padding-free": (True, True, False, False),
    "+ fused AdamW": (True, True, False, True),
    "+ bf16 autocast": (True, True, True, True),
}


def main() -> None:
    import json
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    from tunesmith import models
    from tunesmith.data.template import tokenize_example
    from tunesmith.train.speed import score_labelled_positions_only

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--data", default="demo")
    ns = p.parse_args()
    path = models.resolve_base("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    if ns.data == "demo":
        convs = [json.loads(x)["messages"] for x in (DEMO / "train.jsonl").read_text().splitlines()]
    else:
        convs = [r["messages"] for r in mixed_rows(64, 1)]
    random.Random(0).shuffle(convs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opts = {False: torch.optim.AdamW(params, lr=1e-5, foreach=False), True: torch.optim.AdamW(params, lr=1e-5, fused=True)}
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    tokens: dict[str, int] = {}
    for rnd in range(ns.rounds + 1):  # round 0 warms up and is not counted
        rows = [tokenize_example(tok, c) for c in convs[rnd * ns.batch : (rnd + 1) * ns.batch]]
        feats = [{"input_ids": t.input_ids, "labels": t.labels} for t in rows]
        for name, (packed, labelled, bf16, fused) in CONFIGS.items():
            batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=packed)(feats)
            if packed:
                batch = {k: batch[k] for k in ("input_ids", "labels", "position_ids")}
            score_labelled_positions_only(labelled)
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            started = time.perf_counter()
            with amp:
                loss = model(**batch, fused_lm_head=True).loss
            loss.backward()
            opts[fused].step()
            opts[fused].zero_grad()
            if rnd:
                times[name].append(time.perf_counter() - started)
                tokens[name] = tokens.get(name, 0) + sum(len(f["input_ids"]) for f in feats)
        print(f"round {rnd} done, load {os.getloadavg()[0]:.2f}", flush=True)
    base = statistics.median(times["plain (padded, all positions, fp32)"])
    print(f"{ns.data}: batch {ns.batch}, {ns.rounds} rounds, load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:38s} {med:6.2f} s/step  {tokens[name] / sum(ts):7.1f} tok/s  speed-up {base / med:.2f}x")


if __name__ == "__main__":
    main()
