"""speed.shared_prefix (train/compact.py): rows that begin alike run their common tokens once and padding is not run,
with the loss, the logits and every gradient of the plain forward (within float tolerance); and SFT, DPO and GRPO
train the same with it, and DPO and GRPO with labelled logits, as without."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from helpers import chat_rows

SYSTEM = "You extract support tickets. Reply with one line of JSON with the keys customer, product and priority."


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def lora(model):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )


def sft_rows(tok, n=4):
    """Demonstrations that share a long system prompt, of different lengths."""
    from tunesmith.data.template import tokenize_example

    out = []
    for i, r in enumerate(chat_rows(n, seed=5)):
        r["messages"][0]["content"] = SYSTEM
        r["messages"][1]["content"] += " Please, quickly." * i
        t = tokenize_example(tok, r["messages"])
        out.append({"input_ids": t.input_ids, "labels": t.labels})
    return out


def loss_and_grads(model, batch, shared: bool):
    """Loss and adapter gradients of one forward + backward, with the lever installed or not."""

    from tunesmith.train import compact

    unwrap = compact.install(model.get_base_model()) if shared else None
    try:
        model.zero_grad()
        out = model(**batch, use_cache=False)
        out.loss.backward()
    finally:
        if unwrap is not None:
            unwrap()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.logits.detach(), grads


def assert_same(plain, shared):
    import torch

    (l1, z1, g1), (l2, z2, g2) = plain, shared
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z2, z1, rtol=1e-4, atol=1e-5)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_layout_runs_shared_tokens_once_and_gathers_every_position_back():
    import torch

    from tunesmith.train.compact import layout

    prefix = list(range(100, 120))  # 20 tokens every row starts with
    rows = [prefix + [1, 2, 3], prefix + [4, 5], [7] * 5, prefix[:18] + [9]]
    ids = torch.tensor([sum(rows, [])])
    positions = torch.tensor([sum((list(range(len(r))) for r in rows), [])])
    lay = layout(ids, position_ids=positions)
    assert lay is not None
    # row 0 is the anchor; rows 1 and 3 continue its first 20 and 18 tokens; row 2 shares nothing and is an anchor
    assert lay.segments == [(0, 23, 0, 0), (23, 25, 0, 20), (25, 26, 0, 18), (26, 31, 0, 0)]
    assert lay.ids.shape[1] == 31 and lay.saved == ids.shape[1] - 31 == 38
    assert torch.equal(lay.ids[0][lay.gather], ids[0])  # every position reads its own token back
    assert lay.positions[0][lay.gather].tolist() == positions[0].tolist()
    # a padded batch: padding is not run and gathers the zero row
    padded = torch.tensor([[0, 0, *prefix, 5], [*prefix, 6, 7, 8]])
    mask = (torch.arange(23) >= torch.tensor([[2], [0]])).long()
    lay = layout(padded, attention_mask=mask)
    assert lay is not None and lay.ids.shape[1] == 24 and lay.gather[:2].tolist() == [24, 24]
    assert layout(padded, attention_mask=torch.tensor([[1, 0] * 11 + [1]] * 2)) is None  # a hole: not handled


def test_shared_prefix_keeps_packed_sft_loss_logits_and_gradients(tiny):
    """Padding-free SFT rows (one packed sequence, varlen attention) that share a system prompt: the prompt runs once,
    and loss, logits and LoRA gradients equal the packed rows run whole."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunesmith.train import compact, varlen

    base, tok = tiny
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(sft_rows(tok))
    batch = {k: packed[k] for k in ("input_ids", "labels", "position_ids")}
    lay = compact.layout(batch["input_ids"], position_ids=batch["position_ids"])
    assert lay is not None and lay.saved >= 3 * 20  # three rows continue the first one's system prompt
    model = lora(base)
    previous = varlen.use(model.get_base_model())
    try:
        assert_same(loss_and_grads(model, batch, False), loss_and_grads(model, batch, True))
    finally:
        varlen.restore(model.get_base_model(), previous)


def test_shared_prefix_keeps_a_padded_pair_batch(tiny):
    """DPO's shape: prompt + chosen and prompt + rejected, right-padded, under the model's own sdpa attention."""
    import torch

    base, tok = tiny
    prompt = tok(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nAdd 2 and 3.<|im_end|>\n")["input_ids"]
    answers = [tok(a)["input_ids"] for a in ('{"sum": 5}', "no idea, sorry about that")]
    seqs = [prompt + a for a in answers] + [prompt[:-3] + answers[1]]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : len(prompt)] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    model = lora(base)
    plain, shared = loss_and_grads(model, batch, False), loss_and_grads(model, batch, True)
    assert model.get_base_model().config._attn_implementation == "sdpa"  # restored after each compact forward
    real = mask.bool()  # padding positions hold different (unused) values on the two paths
    torch.testing.assert_close(shared[1][real], plain[1][real], rtol=1e-4, atol=1e-5)
    assert_same((plain[0], plain[1][real], plain[2]), (shared[0], shared[1][real], shared[2]))


def test_generation_and_cached_calls_run_the_backbone_unchanged(tiny):
    """With a KV cache (generation), the wrapper steps aside: greedy tokens are those of the plain model."""
    import torch

    from tunesmith.train import compact

    base, tok = tiny
    model = copy.deepcopy(base)
    ids = torch.tensor([tok(f"{SYSTEM} Add 2 and 3.")["input_ids"]] * 2)
    expected = model.generate(ids, max_new_tokens=5, do_sample=False)
    unwrap = compact.install(model)
    try:
        got = model.generate(ids, max_new_tokens=5, do_sample=False)
    finally:
        unwrap()
    assert torch.equal(got, expected)
    assert "forward" not in model.base_model.__dict__  # unwrapped


def _curve(tiny_recipe, name, levers, **sections):
    """Five fp32 steps of a method with these speed levers: the logged figures and the run."""
    from tunesmith.config import load_recipe
    from tunesmith.run import read_metrics
    from tunesmith.train.entry import run as train_run

    speed = {"precision": "fp32", **levers, **sections.pop("speed", {})}
    tag = "-".join(f"{k}{v}" for k, v in levers.items())
    path = tiny_recipe(training={"max_steps": 5, "learning_rate": 1e-2}, speed=speed, output_dir=f"runs/{name}-{tag}", **sections)
    run = train_run(load_recipe(path))
    return [m for m in read_metrics(run.dir) if "loss" in m and "eval_loss" not in m], run


@pytest.fixture
def evidence(monkeypatch):
    """What the levers did: tokens each compacted forward did not run, and rows TRL's fused LM head projected."""
    import trl.trainer.utils as trl_utils

    from tunesmith.train import compact

    seen: dict[str, list[int]] = {"saved": [], "projected": []}
    layout, project = compact.layout, trl_utils._ChunkedLogProbFunction.apply

    def spy_layout(*args, **kwargs):
        lay = layout(*args, **kwargs)
        seen["saved"].append(lay.saved if lay is not None else -1)
        return lay

    def spy_project(hidden, *args):
        seen["projected"].append(hidden.shape[0])
        return project(hidden, *args)

    monkeypatch.setattr(compact, "layout", spy_layout)
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy_project)
    return seen


def _same_training(tiny_recipe, evidence, name, lever, keys=("loss", "grad_norm"), **sections):
    """The method trains the same curve and the same adapter with `lever` on and off (every other lever as the
    default), the lever really acted, and the manifest records which run had it."""
    import torch
    from safetensors.torch import load_file

    runs = {}
    for on in (False, True):
        for key in evidence:
            evidence[key].clear()
        runs[on] = (*_curve(tiny_recipe, name, {lever: on}, **copy.deepcopy(sections)), copy.deepcopy(evidence))
    (plain, plain_run, off), (fast, run, on) = runs[False], runs[True]
    if lever == "shared_prefix":
        assert off["saved"] == [] and on["saved"] and min(on["saved"]) > 0, on["saved"]  # compacted, and it saved tokens
    else:  # labelled_logits: only positions with a trained next token reached the LM head
        assert sum(on["projected"]) < sum(off["projected"]), (on["projected"], off["projected"])
    assert len(plain) == len(fast) == 5 and plain[0]["loss"] != plain[-1]["loss"]
    for key in keys:
        assert [r[key] for r in fast] == pytest.approx([r[key] for r in plain], rel=1e-3, abs=1e-5), key
    assert getattr(run.manifest.speed, lever) and not getattr(plain_run.manifest.speed, lever)
    a, b = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (plain_run, run))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
    return run


def test_sft_trains_the_same_with_the_shared_prefix(tiny_recipe, evidence):
    """Whole batches of four rows (their 24-token system prompt and header run once per pass) train what the rows
    run whole train; the pass size counts the shared tokens once."""
    run = _same_training(tiny_recipe, evidence, "sft", "shared_prefix", speed={"micro_batch_tokens": 140})
    assert run.manifest.speed.micro_batch == 4  # 4 x 52 tokens = 208 > 140, but 52 + 3 x 28 = 136 fits


def _dpo(tmp_path) -> dict:
    from helpers import write_jsonl

    rows = [
        {"prompt": r["messages"][:2], "chosen": [r["messages"][2]], "rejected": [{"role": "assistant", "content": "no idea"}]}
        for r in chat_rows(24, seed=3)
    ]
    write_jsonl(tmp_path / "pref.jsonl", rows)
    return {"method": "dpo", "data": {"train": ["pref.jsonl"], "eval": None}}


def _grpo(tmp_path) -> dict:
    from helpers import write_jsonl

    (tmp_path / "my_rewards.py").write_text(
        "def distinct_chars(prompts, completions, **kw):\n"
        "    return [len(set(c[0]['content'] if isinstance(c, list) else c)) / 10 for c in completions]\n"
    )
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["messages"][:2]} for r in chat_rows(24, 4)])
    return {
        "method": "grpo",
        "data": {"train": ["prompts.jsonl"], "eval": None},
        "grpo": {"rewards": ["my_rewards:distinct_chars"], "num_generations": 4, "max_completion_length": 8, "beta": 0.04},
    }


@pytest.mark.parametrize("lever", ["shared_prefix", "labelled_logits"])
@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_dpo_and_grpo_train_the_same_with_each_lever(tiny_recipe, evidence, tmp_path, method, lever):
    """DPO's chosen and rejected rows share their prompt, GRPO's group of completions shares its prompt: run once
    (for the policy and the reference) and without padding (shared_prefix); only their labelled positions reach the
    LM head (labelled_logits). Generation is untouched (the same seed samples the same completions), so the losses,
    reward margins or rewards, gradient norms and the adapter match the plain path."""
    sections = _dpo(tmp_path) if method == "dpo" else _grpo(tmp_path)
    keys = ("loss", "grad_norm", "rewards/margins") if method == "dpo" else ("loss", "reward", "grad_norm")
    _same_training(tiny_recipe, evidence, method, lever, keys, **sections)


def test_frozen_bf16_base_is_the_fp32_model_with_bf16_rounded_weights(tiny):
    """speed.frozen_bf16: the decoder's frozen linears stored in bf16 and multiplied in fp32 give the loss, logits and
    LoRA gradients of the fp32 model whose weights were rounded to bf16 (to float tolerance), within 1% of the
    unrounded model's loss, at half those layers' memory; the embeddings and LM head stay fp32."""
    import torch

    from tunesmith.train import upcast

    base, tok = tiny
    batch = {k: torch.tensor([v]) for k, v in sft_rows(tok, 1)[0].items()}
    rounded, stored, plain = (copy.deepcopy(base) for _ in range(3))
    for name, p in rounded.named_parameters():
        if name.endswith("proj.weight"):
            p.data = p.data.to(torch.bfloat16).float()
    assert upcast.install(stored) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    assert stored.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert stored.get_input_embeddings().weight.dtype == torch.float32
    models = [lora(m) for m in (rounded, stored, plain)]
    adapter = {n: p for n, p in models[0].named_parameters() if p.requires_grad}
    for m in models[1:]:  # the same adapter weights on each (peft draws them in the base layer's dtype)
        for n, p in m.named_parameters():
            if p.requires_grad:
                assert p.dtype == torch.float32
                p.data = adapter[n].data.clone()
    results = [loss_and_grads(m, batch, False) for m in models]
    assert_same(results[0], results[1])
    assert abs(float(results[1][0]) - float(results[2][0])) / float(results[2][0]) < 0.01


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc (Linux)")
def test_frozen_bf16_lets_go_of_the_checkpoint_file(tiny_model_dir, tmp_path):
    """An fp32 checkpoint loads as views of its mapped safetensors file. Once the linears are stored in bf16, the
    tensors left in fp32 (embeddings, tied LM head, norms) are copied out, so the mapping closes and the pages the
    conversion read leave the process (308 MB of SmolLM2-135M's peak); the weights and the tie are unchanged."""
    import gc
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.train import upcast

    folder = shutil.copytree(tiny_model_dir, tmp_path / "base")  # a file no other test's model maps

    def mapped() -> bool:
        return any(str(folder) in line for line in Path("/proc/self/maps").read_text().splitlines())

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert mapped()  # the loader maps the file: without the copy below it stays open
    embeddings = model.get_input_embeddings().weight.detach().clone()
    upcast.install(model)
    gc.collect()
    assert not mapped()
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    if model.config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    del model


def test_sft_with_the_frozen_base_in_bf16_follows_the_fp32_curve(tiny_recipe):
    """A whole fp32 SFT run with speed.frozen_bf16 trains within 2% of the fp32 base's curve (the rounding of the
    weights is the difference), and the manifest records it."""
    plain, plain_run = _curve(tiny_recipe, "sft", {"frozen_bf16": False})
    fast, run = _curve(tiny_recipe, "sft", {"frozen_bf16": True})
    assert len(plain) == len(fast) == 5 and plain[0]["loss"] != plain[-1]["loss"]
    assert max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(plain, fast)) < 0.02
    assert [a["loss"] for a in plain] != [b["loss"] for b in fast]  # the lever really ran
    assert run.manifest.speed.frozen_bf16 and not plain_run.manifest.speed.frozen_bf16
