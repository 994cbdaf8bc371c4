"""Speed levers: each one computes what the plain path computes (loss, gradients, updates) within tolerance."""

from __future__ import annotations

import pytest

from helpers import chat_rows


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def rows(tok, n=4):
    from tunesmith.data.template import tokenize_example

    out = []
    for i, r in enumerate(chat_rows(n, seed=5)):
        if i % 2:  # different lengths, so the padded batch really pads
            r["messages"][1]["content"] += " Please, quickly." * (i + 1)
        t = tokenize_example(tok, r["messages"])
        out.append({"input_ids": t.input_ids, "labels": t.labels})
    return out


def fused_loss(model, batch, compact: bool):
    """TRL's fused LM head loss, with only labelled positions scored (compact) or every position."""
    from trl.trainer.utils import add_fused_lm_head

    from tunesmith.train.speed import score_labelled_positions_only

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    score_labelled_positions_only(compact)
    try:
        return model(**batch, fused_lm_head=True).loss
    finally:
        score_labelled_positions_only(False)
        model.forward = type(model).forward.__get__(model)


def test_padding_free_loss_equals_padded_loss(tiny):
    """Rows concatenated without padding (position_ids, sdpa) score exactly as the padded batch: no cross-row attention."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok = tiny
    data = rows(tok)
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(data)
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(data)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        a = model(**padded).loss
        # transformers isolates packed rows only without a KV cache; TRL's fused head (the training path) turns it off.
        b = model(**{k: packed[k] for k in ("input_ids", "labels", "position_ids")}, use_cache=False).loss
        fused = fused_loss(model, {k: packed[k] for k in ("input_ids", "labels", "position_ids")}, True)
        separate = [model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])) for r in data]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, fused, rtol=1e-5, atol=1e-5)
    # and the packed loss is the token-weighted mean of each row scored alone
    n = [sum(x != -100 for x in r["labels"][1:]) for r in data]
    alone = sum(float(o.loss) * k for o, k in zip(separate, n)) / sum(n)
    assert float(b) == pytest.approx(alone, rel=1e-5)


def test_varlen_attention_equals_the_block_mask_loss_and_gradients(tiny):
    """speed.attention=varlen (each packed row attended alone) gives the block-diagonal mask's loss and gradients,
    and refuses what it cannot attend correctly (a padded batch) instead of ignoring the mask."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunesmith.train import varlen

    model, tok = tiny
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(rows(tok))
    batch = {k: packed[k] for k in ("input_ids", "labels", "position_ids")}
    assert len(set(packed["position_ids"][0].tolist()[1:]) & {0}) == 1 and (packed["position_ids"][0] == 0).sum() == 4
    results = {}
    for name in ("mask", "varlen"):
        previous = varlen.use(model) if name == "varlen" else None
        try:
            model.zero_grad()
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            results[name] = (loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
            if name == "varlen":
                padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows(tok))
                with pytest.raises(ValueError, match="one packed sequence"):
                    model(**padded, use_cache=False)
        finally:
            if previous is not None:
                varlen.restore(model, previous)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(results["varlen"][0], results["mask"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["varlen"][1], results["mask"][1], rtol=1e-4, atol=1e-6)


def test_labelled_logits_equal_full_logits_loss_and_gradients(tiny):
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok = tiny
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows(tok))
    grads = {}
    losses = {}
    for name, fn in (
        ("plain", lambda: model(**batch).loss),
        ("all", lambda: fused_loss(model, batch, False)),
        ("labelled", lambda: fused_loss(model, batch, True)),
    ):
        model.zero_grad()
        losses[name] = fn()
        losses[name].backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for name in ("all", "labelled"):
        torch.testing.assert_close(losses[name], losses["plain"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[name], grads["plain"], rtol=1e-4, atol=1e-6)


def test_private_trl_names_still_exist():
    """score_labelled_positions_only patches these; an upgrade that moves them must fail here, not silently."""
    import trl.trainer.utils as trl_utils
    from trl.kernels import chunked_logprob

    assert callable(trl_utils._use_triton) and callable(chunked_logprob._use_triton)
    assert callable(trl_utils.add_fused_lm_head)


def test_fused_adamw_matches_loop():
    import torch

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(16, 8)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opts = [torch.optim.AdamW(params, lr=1e-2, fused=True), torch.optim.AdamW(twins, lr=1e-2, foreach=False)]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for group, opt in zip((params, twins), opts):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_resolve_and_translate(tiny_recipe):
    from tunesmith.config import load_recipe
    from tunesmith.train import speed

    recipe = load_recipe(tiny_recipe())
    s = speed.resolve(recipe)
    assert s.packing == "padding_free" and s.labelled_logits and s.fused_optimizer and not s.compile
    args = speed.sft_args(s)
    assert args["padding_free"] and args["optim"] == "adamw_torch_fused" and args["prediction_loss_only"]
    grouped = speed.resolve(load_recipe(tiny_recipe(speed={"packing": "group_by_length", "precision": "bf16"})))
    assert speed.sft_args(grouped)["train_sampling_strategy"] == "group_by_length"
    assert not speed.sft_args(grouped)["padding_free"] and grouped.bf16
    prompt = speed.resolve(load_recipe(tiny_recipe(adapter={"type": "prompt_tuning"})))
    assert prompt.packing == "group_by_length"


def _losses(tiny_recipe, name, **speed_section):
    from tunesmith.config import load_recipe
    from tunesmith.train import sft

    path = tiny_recipe(speed=speed_section, training={"max_steps": 6, "learning_rate": 1e-3}, output_dir=f"run-{name}")
    run = sft.run(load_recipe(path))
    from tunesmith.run import read_metrics

    return [m["loss"] for m in read_metrics(run.dir) if "loss" in m and "eval_loss" not in m], run


def test_training_levers_keep_the_loss_curve(tiny_recipe):
    """Default levers (padding-free, labelled logits, fused AdamW) and bf16 autocast vs the plain fp32 padded path."""
    plain, plain_run = _losses(
        tiny_recipe, "plain", packing="off", labelled_logits=False, fused_optimizer=False, precision="fp32", release_memory=False
    )
    fast, run = _losses(tiny_recipe, "fast", precision="fp32")
    bf16, bf16_run = _losses(tiny_recipe, "bf16", precision="bf16")
    assert len(plain) == len(fast) == 6
    assert max(abs(a - b) / a for a, b in zip(plain, fast)) < 1e-3
    # bf16: autocast, the frozen base stored in bf16, adapter inputs not cast up to fp32 (fp32 adapter weights).
    assert max(abs(a - b) / a for a, b in zip(plain, bf16)) < 0.03
    assert run.manifest.speed.packing == "padding_free"
    import torch

    from tunesmith.train import speed

    # Handing freed memory back after each step is on by default on a glibc CPU, and off in the plain run.
    assert run.manifest.speed.release_memory is (not torch.cuda.is_available() and speed._malloc_trim() is not None)
    assert plain_run.manifest.speed.release_memory is False

    assert run.manifest.speed.attention == ("mask" if torch.cuda.is_available() else "varlen")
    lever = bf16_run.manifest.speed
    assert lever.bf16 and lever.base_dtype == "bfloat16" and not lever.adapter_input_cast


def test_compile_keeps_the_loss_curve(tiny_recipe):
    """speed.compile (torch.compile through transformers) trains the same curve as eager, bf16 autocast and varlen
    attention included, over batches whose lengths and row boundaries change every step (recompiles, no stale graph)."""
    from torch._dynamo.utils import counters

    eager, _ = _losses(tiny_recipe, "eager", precision="bf16")
    counters.clear()
    compiled, run = _losses(tiny_recipe, "compiled", precision="bf16", compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the model really went through torch.compile
    assert run.manifest.speed.compile is True and run.manifest.speed.bf16 is True
    assert len(compiled) == len(eager) == 6
    assert max(abs(a - b) / a for a, b in zip(eager, compiled)) < 1e-3


def test_micro_batch_follows_the_token_budget(tiny_recipe, monkeypatch):
    """speed.micro_batch_tokens: the largest divisor of batch_size whose rows x mean row length fit the budget (at
    least one row); auto = 256 tokens on a CPU training in bf16, 512 on one training in fp32, and no split on CUDA;
    never with group_by_length batching."""
    from tunesmith.config import load_recipe
    from tunesmith.train import speed

    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)

    def rows(budget="auto", batch=4, mean=240, cuda=False, packing="auto", precision="auto", **sections):
        levers = {"micro_batch_tokens": budget, "packing": packing, "precision": precision}
        recipe = load_recipe(tiny_recipe(speed=levers, training={"batch_size": batch}, **sections))
        return speed.micro_batch(recipe, [mean - 10, mean + 10], cuda)

    assert speed.CPU_MICRO_BATCH_TOKENS == 256 and speed.CPU_FP32_MICRO_BATCH_TOKENS == 640
    assert rows(precision="fp32") == 2 and rows(mean=300, precision="fp32") == 2 and rows(mean=400, precision="fp32") == 1
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)  # a CPU without bf16 units trains in fp32
    assert rows() == 2 and rows(mean=150) == 4 and rows(precision="bf16") == 1
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    assert rows() == 1 and rows(mean=100) == 2 and rows(mean=60) == 4 and rows(mean=300) == 1
    assert rows(batch=6, mean=100) == 2 and rows(batch=6, mean=80) == 3  # divisors of 6: 1, 2, 3, 6
    assert rows(cuda=True) == 4 and rows("off") == 4 and rows(1000) == 4 and rows(500, cuda=True) == 2
    assert rows(1, packing="group_by_length") == 4
    assert rows(adapter={"type": "prompt_tuning"}) == 4  # auto packing is group_by_length there
    assert rows(1, packing="padding_free", adapter={"type": "prompt_tuning"}) == 4  # batched group_by_length as well

    recipe = load_recipe(tiny_recipe(speed={"micro_batch_tokens": 100}, training={"batch_size": 4, "grad_accum": 3}))
    levers = speed.resolve(recipe, None, [90, 110, 100])
    assert (levers.micro_batch, levers.passes) == (1, 12)
    args = speed.sft_args(levers)
    assert args["per_device_train_batch_size"] == 1 and args["gradient_accumulation_steps"] == 12
    assert speed.resolve(recipe).micro_batch == 4  # no lengths: not split
    padded = speed.resolve_padded(recipe)  # DPO, GRPO and logit distillation do not split
    assert (padded.micro_batch, padded.passes) == (4, 3) and "per_device_train_batch_size" not in speed.trainer_args(padded)


def test_liger_is_on_only_where_it_can_run(tiny_recipe, monkeypatch):
    """speed.liger: auto is on only with CUDA and liger-kernel both present (and for SFT); true without them is a
    recipe error naming the field, not a crash when training starts."""
    import importlib.util

    from tunesmith.config import load_recipe
    from tunesmith.errors import RecipeError
    from tunesmith.train import methods, speed

    auto = load_recipe(tiny_recipe())
    forced = load_recipe(tiny_recipe(speed={"liger": True}))
    real = importlib.util.find_spec
    for installed in (True, False):

        def find_spec(name, *args, installed=installed):
            return (object() if installed else None) if name == "liger_kernel" else real(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        assert speed.uses_liger(auto, cuda=True) is installed
        assert speed.uses_liger(auto, cuda=False) is False
        assert speed.uses_liger(auto, cuda=True, allowed=methods.get("dpo").liger) is False  # TRL's DPO: Liger's own loss
        with pytest.raises(RecipeError, match="speed.liger"):
            speed.uses_liger(forced, cuda=False)
        if installed:
            assert speed.uses_liger(forced, cuda=True) is True
            assert speed.sft_args(speed.resolve(auto).model_copy(update={"liger": True}))["use_liger_kernel"] is True
        else:
            with pytest.raises(RecipeError, match="liger-kernel is not installed"):
                speed.uses_liger(forced, cuda=True)
    assert speed.sft_args(speed.resolve(auto))["use_liger_kernel"] is False  # this CPU machine


def test_split_batches_keep_the_loss_curve(tiny_recipe, caplog):
    """A batch run as one-row passes with accumulated gradients trains what the whole batch trains: the same losses
    and the same adapter weights after 5 steps, from four times the forward passes of a quarter of the tokens."""
    import torch

    from tunesmith.config import load_recipe
    from tunesmith.train import sft

    results = {}
    for name, budget in (("whole", "off"), ("split", 1)):
        path = tiny_recipe(
            speed={"micro_batch_tokens": budget, "precision": "fp32"},
            training={"max_steps": 5, "learning_rate": 1e-2},
            output_dir=f"run-{name}",
        )
        built = sft.build(load_recipe(path))
        passes: list[int] = []

        def count(module, args, kwargs, passes=passes):
            if module.training:
                passes.append(int((kwargs.get("labels", args[1] if len(args) > 1 else None) != -100).sum()))

        built.model.register_forward_pre_hook(count, with_kwargs=True)
        built.trainer.train()
        losses = [h["loss"] for h in built.trainer.state.log_history if "loss" in h]
        weights = {n: p.detach().clone() for n, p in built.trainer.model.named_parameters() if p.requires_grad}
        results[name] = (losses, weights, passes, built.speed)
    (l1, w1, p1, s1), (l2, w2, p2, s2) = results["whole"], results["split"]
    assert not [r for r in caplog.records if "padding-free" in r.getMessage()]  # TRL's batch-of-one advice is not shown
    assert (s1.micro_batch, s1.passes) == (4, 1) and (s2.micro_batch, s2.passes) == (1, 4)
    assert len(p1) == 5 and len(p2) == 20 and sum(p1) == sum(p2)  # the same trained tokens, in 4x the passes
    assert len(l1) == len(l2) == 5 and l1[0] != l1[-1]
    assert max(abs(a - b) / a for a, b in zip(l1, l2)) < 1e-4, (l1, l2)
    for n in w1:
        torch.testing.assert_close(w1[n], w2[n], rtol=1e-4, atol=1e-5)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def test_release_freed_memory_hands_the_heap_back():
    """Freed tensors that glibc keeps in its heap leave the process's resident memory after release_freed_memory."""
    import torch

    from tunesmith.train import speed

    if speed._malloc_trim() is None:
        pytest.skip("the C library is not glibc: speed.release_memory resolves to false here")
    blocks = [torch.ones(16_000) for _ in range(4_000)]  # 64 KB each, below glibc's mmap threshold: 250 MB of heap
    live = blocks[1::2]  # every other block stays: the freed ones are holes free() cannot return from the heap's top
    full = _rss_mb()
    del blocks
    kept = _rss_mb()
    assert speed.release_freed_memory()
    released = _rss_mb()
    assert kept > full - 30  # glibc kept the 125 MB of freed blocks resident
    assert released < kept - 80, (full, kept, released)
    assert all(float(t[0]) == 1.0 for t in live)


def test_adapter_input_cast_off_matches_on_under_autocast(tiny):
    """Under bf16 autocast, peft's cast of the adapter input to fp32 changes nothing but memory: loss and LoRA
    gradients are the same with the cast on (peft's default) and off (the bf16 lever)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.train import speed

    base, tok = tiny
    batch = rows(tok, 2)[0]
    ids, labels = torch.tensor([batch["input_ids"]]), torch.tensor([batch["labels"]])
    results = []
    for cast in (True, False):
        torch.manual_seed(0)
        model = get_peft_model(
            copy.deepcopy(base).to(torch.bfloat16),
            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
        )
        lever = speed.Speed(
            packing="padding_free",
            attention="varlen",
            labelled_logits=True,
            bf16=True,
            base_dtype="bfloat16",
            adapter_input_cast=cast,
            gradient_checkpointing=False,
            fused_optimizer=True,
            compile=False,
            release_memory=False,
            eval_batch_size=8,
            device="cpu",
            liger=False,
            micro_batch=1,
            passes=1,
        )
        speed.apply_to_model(lever, model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)  # fp32 master weights
        results.append((loss.detach(), grads))
    (loss_on, g_on), (loss_off, g_off) = results
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-2, atol=1e-3)
    for name in g_on:
        torch.testing.assert_close(g_on[name], g_off[name], rtol=2e-2, atol=2e-3)


def test_tokenize_once(tiny_recipe, tiny_model_dir):
    """The audit's tokenized rows are the training rows: every kept row comes from the memo, none is tokenized twice,
    and a memo hit gives the same ids and labels as a fresh tokenization, truncation included."""
    from tunesmith.config import load_recipe
    from tunesmith.data import template
    from tunesmith.train import sft

    run = sft.run(load_recipe(tiny_recipe(training={"max_steps": 1}, output_dir="run-once")))
    for split in ("train", "eval"):
        stats = getattr(run.manifest.tokens, split)
        assert stats.kept > 0 and stats.reused == stats.examples, (split, stats)
    assert not template._memo  # cleared once the training rows were built

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = chat_rows(1, seed=9)[0]["messages"]
    fresh = template.tokenize_example(tok, messages, 12, "truncate")
    again = template.tokenize_example(tok, messages, 12, "truncate")
    template.clear_memo()
    assert not fresh.reused and again.reused
    assert (fresh.input_ids, fresh.labels, fresh.n_tokens, fresh.tokens_lost) == (
        again.input_ids,
        again.labels,
        again.n_tokens,
        again.tokens_lost,
    )


def test_onednn_kernel_cache_is_bounded_before_the_first_rate_probe():
    """oneDNN reads its cache bound when it creates its first kernel: a matmul-rate probe that ran before the bound
    was set (the benchmark's, before anything imported train/speed.py) left training holding 270 MB more. The bound
    comes with the module that probes; a value the user exported is kept."""
    import os
    import subprocess
    import sys

    code = (
        "import os\nfrom tunesmith.train import hardware\n"
        "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])\nhardware.gemm_gflops('float32', n=64, seconds=0.01)"
    )
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["32"]
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "7"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["7"]
