"""One length/loss contract for every method: dpo, grpo and distill-logits apply data.max_length / data.overlong
themselves, count it in the manifest like sft, the audit (`data check`) measures what the method trains, and TRL
never truncates after tunesmith has counted."""

from __future__ import annotations

import json

import pytest

from helpers import chat_rows, write_jsonl
from tunesmith.config import load_recipe
from tunesmith.data import lengths
from tunesmith.data.audit import audit, audit_recipe
from tunesmith.errors import DataError
from tunesmith.train import methods

LONG = " ".join(f"word{i}" for i in range(120))


@pytest.fixture
def tok(tiny_model_dir):
    from tunesmith import models

    return models.load_tokenizer(str(tiny_model_dir))


def _pairs(path, n=12, n_long=4):
    rows = []
    for i, r in enumerate(chat_rows(n, seed=3)):
        chosen = r["messages"][2]["content"] + (" " + LONG if i < n_long else "")
        rows.append(
            {
                "prompt": r["messages"][:2],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": "no idea"}],
            }
        )
    return write_jsonl(path, rows)


def _prompts(path, n=12, n_long=4):
    rows = [
        {
            "prompt": [{"role": "user", "content": (LONG + " " if i < n_long else "") + f"Question {i}: add 2 and {i}."}],
            "answer": str(2 + i),
        }
        for i in range(n)
    ]
    return write_jsonl(path, rows)


def _over(tok, messages, max_length):
    return lengths.conversation(tok, messages)[0] > max_length


@pytest.mark.parametrize("policy", ["drop", "truncate", "error"])
def test_dpo_applies_the_policy_and_counts_it(tiny_recipe, tmp_path, tok, policy):
    from tunesmith.train import dpo

    _pairs(tmp_path / "pref.jsonl")
    _pairs(tmp_path / "pref_eval.jsonl", n=3, n_long=0)
    recipe = load_recipe(
        tiny_recipe(method="dpo", data={"train": ["pref.jsonl"], "eval": "pref_eval.jsonl", "max_length": 96, "overlong": policy})
    )
    if policy == "error":
        with pytest.raises(DataError, match="over max_length=96"):
            dpo.METHOD.datasets(recipe, tok)
        return
    data = dpo.METHOD.datasets(recipe, tok)
    train_ds, s, e = data.train, data.counts.train, data.counts.eval
    assert s.dropped_overlong + s.truncated == 4  # every long pair, and nothing else
    assert e.examples == e.kept == 3
    assert s.kept == len(train_ds) == s.examples - s.dropped_overlong - s.dropped_no_trained_tokens
    if policy == "drop":
        assert s.truncated == 0 and s.tokens_lost == 0
    else:
        assert s.dropped_overlong == 0 and s.truncated >= 1 and s.tokens_lost > 0
    for row in train_ds:  # every pair TRL receives fits: it has nothing left to truncate
        for answer in ("chosen", "rejected"):
            assert not _over(tok, row["prompt"] + row[answer], 96)


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_reward_applies_the_pair_policy_and_tokenizes_within_max_length(tiny_recipe, tmp_path, tok, policy):
    """A reward model measures a pair as DPO does; every pair TRL's RewardTrainer receives is already tokenized (it
    skips its own tokenization and filter) and fits max_length."""
    from tunesmith.train import reward

    _pairs(tmp_path / "pref.jsonl")
    _pairs(tmp_path / "pref_eval.jsonl", n=3, n_long=0)
    data = {"train": ["pref.jsonl"], "eval": "pref_eval.jsonl", "max_length": 96, "overlong": policy}
    got = reward.METHOD.datasets(load_recipe(tiny_recipe(method="reward", data=data)), tok)
    s = got.counts.train
    assert s.dropped_overlong + s.truncated == 4 and got.counts.eval.kept == 3
    assert set(got.train.column_names) == {"chosen_ids", "rejected_ids"} and len(got.train) == s.kept
    assert all(len(row["chosen_ids"]) <= 96 and len(row["rejected_ids"]) <= 96 for row in got.train)


def test_trl_is_never_asked_to_truncate(tiny_recipe, tmp_path):
    from tunesmith.train import _trl

    _pairs(tmp_path / "pref.jsonl")
    recipe = load_recipe(tiny_recipe(method="dpo", data={"train": ["pref.jsonl"], "eval": None}))
    assert _trl.build_dpo_config(recipe, recipe.dpo, tmp_path / "run", has_eval=False).max_length is None


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_grpo_counts_prompt_plus_completion_budget(tiny_recipe, tmp_path, tok, policy):
    from tunesmith.train import grpo

    _prompts(tmp_path / "prompts.jsonl")
    recipe = load_recipe(
        tiny_recipe(
            method="grpo",
            data={"train": ["prompts.jsonl"], "eval": None, "eval_fraction": 0.25, "max_length": 96, "overlong": policy},
            grpo={"rewards": ["json_valid"], "num_generations": 4, "max_completion_length": 32},
        )
    )
    data = grpo.METHOD.datasets(recipe, tok)
    ds, t, e = data.train, data.counts.train, data.counts.eval
    assert sum(s.dropped_overlong + s.truncated for s in (t, e)) == 4  # the 4 long prompts, nothing else
    assert t.kept == len(ds) and "max_completion_length 32" in t.measured_as
    for row in ds:
        assert lengths.prompt_tokens(tok, row["prompt"]) + 32 <= 96
    if policy == "truncate":  # the end of the question survives the cut
        assert all("add 2 and" in row["prompt"][-1]["content"] for row in ds)
    # the audit of the same file with the same recipe finds the same rows over the limit
    report = audit_recipe(recipe, methods.get(recipe.method), tok)
    assert report.stats["tokens"]["n_too_long"] == t.dropped_overlong + t.truncated + e.dropped_overlong + e.truncated


def test_distill_logits_rows_fit_and_are_counted(tiny_recipe, tmp_path, tok):
    from tunesmith.data.formats import load_examples
    from tunesmith.train import distill

    rows = chat_rows(8, seed=5)
    for r in rows[:3]:
        r["messages"][2]["content"] += " " + LONG
    write_jsonl(tmp_path / "long.jsonl", rows)
    recipe = load_recipe(
        tiny_recipe(
            method="distill",
            distill={"teacher": str(tmp_path), "mode": "logits"},
            data={"max_length": 80, "overlong": "truncate"},
        )
    )
    kept, stats = distill.logit_rows(recipe, tok, load_examples(str(tmp_path / "long.jsonl")))
    assert stats.examples == 8 and stats.truncated == 3 and stats.tokens_lost > 0 and len(kept) == 8
    assert all(not _over(tok, r["messages"], 80) for r in kept)  # the GKD collator's left-cut never fires


def test_data_check_measures_what_the_method_trains(tmp_path, tok):
    path = _prompts(tmp_path / "prompts.jsonl", n_long=0)
    # 12 short prompts: fine for sft-style counting, but none leaves room for a 200-token completion under 160
    grpo = audit([str(path)], [], tok, 160, "drop", method=methods.get("grpo"), completion_budget=200)
    assert grpo.stats["tokens"]["n_too_long"] == 12 and grpo.stats["tokens"]["method"] == "grpo"
    assert any(f.code == "no_trainable_rows" for f in grpo.findings)
    pairs = _pairs(tmp_path / "pref.jsonl")
    dpo = audit([str(pairs)], [], tok, 96, "drop", method=methods.get("dpo"))
    assert dpo.stats["tokens"]["dropped_overlong"] == 4


def test_eos_claim_is_counted_from_the_masks(tmp_path, tok):
    rows = chat_rows(6, seed=1)
    for r in rows[:2]:
        r["messages"][2]["content"] += " " + LONG
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    report = audit([str(path)], [], tok, 64, "truncate")
    t = report.stats["tokens"]
    assert t["eos_checked_rows"] == 6 and t["eos_trained_rows"] == 4  # truncation cut the EOS of the two long rows
    from tunesmith.cli.data import eos_line

    assert "4 of 6" in eos_line(t)


def test_data_check_cli_takes_method_and_max_length_from_the_recipe(tiny_recipe, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    _prompts(tmp_path / "prompts.jsonl", n_long=0)
    recipe = tiny_recipe(
        method="grpo",
        data={"train": ["prompts.jsonl"], "eval": None, "max_length": 64},
        grpo={"rewards": ["json_valid"], "num_generations": 4, "max_completion_length": 60},
    )
    cfg = load_recipe(recipe)
    res = CliRunner().invoke(app, ["data", "check", "--recipe", str(recipe), "--json", "--model", cfg.model.base])
    report = json.loads(res.stdout)
    t = report["stats"]["tokens"]
    assert t["method"] == "grpo" and t["max_length"] == 64 and t["n_too_long"] == 12
    # an explicit --method / --max-length without a recipe
    res = CliRunner().invoke(
        app,
        [
            "data",
            "check",
            str(tmp_path / "prompts.jsonl"),
            "--json",
            "--model",
            cfg.model.base,
            "--method",
            "grpo",
            "--max-length",
            "400",
            "--max-completion-length",
            "60",
        ],
    )
    t = json.loads(res.stdout)["stats"]["tokens"]
    assert t["max_length"] == 400 and t["n_too_long"] == 0
