"""The one generation function: order, batching, stop tokens from generation_config, stop strings, streaming."""

from __future__ import annotations

import threading
import warnings

import pytest


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tok


def convs(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question {i} " + "word " * (i % 3)}] for i in range(n)]


def test_batched_equals_one_at_a_time_in_input_order(tiny):
    from tunesmith.eval.generate import generate_detailed

    model, tok = tiny
    side = tok.padding_side
    batched = generate_detailed(model, tok, convs(5), 6, batch_size=4)
    single = [generate_detailed(model, tok, [c], 6, batch_size=1)[0] for c in convs(5)]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in single]
    assert tok.padding_side == side


def test_generation_config_eos_list_is_kept(tiny):
    """A Llama-3 style eos list [a, b]: generation stops at b even though the tokenizer's eos is neither."""
    from tunesmith.eval.generate import generate_detailed, stop_token_ids

    model, tok = tiny
    conv = convs(1)[0]
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = None
        free = generate_detailed(model, tok, [conv], 10)[0]
        tokens = [t for t in free.token_ids if t != tok.eos_token_id]
        assert free.finish_reason in ("length", "stop")
        second = tokens[min(2, len(tokens) - 1)]
        first_at = free.token_ids.index(second)
        unused = next(i for i in range(len(tok)) if i not in free.token_ids and i != tok.eos_token_id)
        model.generation_config.eos_token_id = [unused, second]
        assert {unused, second} <= set(stop_token_ids(model, tok))  # after the family's end of turn
        stopped = generate_detailed(model, tok, [conv], 10)[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert stopped.token_ids == free.token_ids[: first_at + 1]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == first_at + 1


def test_length_finish_and_token_counts(tiny):
    from tunesmith.eval.generate import generate_detailed, stop_token_ids

    model, tok = tiny
    out = generate_detailed(model, tok, convs(4), 5, batch_size=4)
    for c in out:
        assert c.prompt_tokens > 0
        assert c.completion_tokens == len(c.token_ids) <= 5
        if c.finish_reason == "length":
            assert c.completion_tokens == 5 and not set(c.token_ids) & set(stop_token_ids(model, tok))
        else:
            assert c.token_ids[-1] in stop_token_ids(model, tok)


def test_stop_string_cuts_text(tiny):
    from tunesmith.eval.generate import generate_detailed

    model, tok = tiny
    full = generate_detailed(model, tok, convs(1), 12)[0]
    if len(full.text) < 4:
        pytest.skip("the random model's answer is too short to cut")
    stop = full.text[2:4]
    cut = generate_detailed(model, tok, convs(1), 12, stop=[stop])[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert full.text.startswith(cut.text)


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny):
    import torch

    from tunesmith.eval.generate import generate

    model, tok = tiny
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate(model, tok, convs(3), 8, temperature=1.5, top_p=0.95, seed=7)
    assert torch.rand(1).item() == before.item()  # the global generator was not advanced
    b = generate(model, tok, convs(3), 8, temperature=1.5, top_p=0.95, seed=7)
    assert a == b


def test_stream_matches_batch_and_reports_usage(tiny):
    from tunesmith.eval.generate import generate_detailed
    from tunesmith.eval.stream import generate_stream

    model, tok = tiny
    conv = convs(1)[0]
    whole = generate_detailed(model, tok, [conv], 10)[0]
    stream = generate_stream(model, tok, conv, 10)
    text = "".join(stream)
    assert text.strip() == whole.text
    assert stream.finish_reason == whole.finish_reason
    assert stream.prompt_tokens == whole.prompt_tokens
    assert stream.completion_tokens == whole.completion_tokens


def test_stream_cancel_stops_early(tiny):
    from tunesmith.eval.stream import generate_stream

    model, tok = tiny
    saved = model.generation_config.eos_token_id
    cancel = threading.Event()
    cancel.set()  # cancelled before the first step: at most one token is produced
    try:
        model.generation_config.eos_token_id = None
        stream = generate_stream(model, tok, convs(1)[0], 50, cancel=cancel)
        list(stream)
    finally:
        model.generation_config.eos_token_id = saved
    assert stream.completion_tokens <= 1
    assert stream.finish_reason in ("cancelled", "stop")


def test_stream_surfaces_errors():
    from tunesmith.eval.stream import TextStream

    class Boom:
        def __iter__(self):
            return iter(())

    stream = TextStream(None)
    stream.error = RuntimeError("boom")
    stream._deltas = stream._run(Boom(), set())
    with pytest.raises(RuntimeError, match="boom"):
        list(stream)


SYSTEM = "You extract support tickets as one line of JSON with the keys customer, product and priority. Reply with JSON only."


def test_common_prefix_counts_common_leading_tokens():
    """One leading-tokens count for training's compaction and for generation/scoring, which leave each row a token."""
    from tunesmith.train.compact import common_prefix

    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2], [1, 2, 3]]) == 2  # training: a row may be all prefix
    assert common_prefix([[1, 2], [1, 2, 3]], own=1) == 1  # generation: every row keeps a token of its own
    assert common_prefix([[1, 2, 3], [1, 2, 3]], own=1) == 2
    assert common_prefix([[], [1]], own=1) == 0
    assert common_prefix([[7, 8, 9]]) == 0  # one row has nothing to share with
    assert common_prefix([[1, 2], [3, 4]]) == 0


def test_shared_system_prompt_runs_once_and_changes_no_token(tiny, monkeypatch):
    """Rows with one system prompt: the batch prefills it once; tokens and counts equal one prompt at a time."""
    import tunesmith.eval.generate as gen

    model, tok = tiny
    rows = [[{"role": "system", "content": SYSTEM}, *c] for c in convs(5)]
    calls: list[int] = []
    real = gen._prefilled

    def spy(model, rows, shared, pad):
        calls.append(shared)
        return real(model, rows, shared, pad)

    monkeypatch.setattr(gen, "_prefilled", spy)
    widths: list[int] = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[-1]))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batched = gen.generate_detailed(model, tok, rows, 8, batch_size=5)
    finally:
        hook.remove()
    assert not [w for w in caught if "deprecated" in str(w.message)]  # the cache goes by the name this transformers uses
    assert len(calls) == 1 and calls[0] >= gen.MIN_SHARED_PREFIX
    longest = max(len(tok(gen.render_prompt(tok, r), add_special_tokens=False)["input_ids"]) for r in rows)
    # The prefix once, then generate() starts after it: its first forward sees only the rows' own tokens.
    assert widths[:2] == [calls[0], longest - calls[0]]
    single = [gen.generate_detailed(model, tok, [r], 8, batch_size=1)[0] for r in rows]
    assert len(calls) == 1  # a batch of one is never prefix-shared
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in single]
    assert [c.finish_reason for c in batched] == [c.finish_reason for c in single]


def test_shared_prefix_with_a_lora_adapter_on_and_off(tiny):
    """Eval generates base and tuned from one PeftModel: the shared prefix must go through the adapter when it is on."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.eval.generate import generate_detailed, shares_prefix

    model, tok = tiny
    torch.manual_seed(0)
    lora = get_peft_model(
        copy_of(model), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    ).eval()
    assert shares_prefix(lora, lora.generation_config)
    rows = [[{"role": "system", "content": SYSTEM}, *c] for c in convs(4)]
    tuned = generate_detailed(lora, tok, rows, 8, batch_size=4)
    assert [c.token_ids for c in tuned] == [generate_detailed(lora, tok, [r], 8, batch_size=1)[0].token_ids for r in rows]
    with lora.disable_adapter():
        base = generate_detailed(lora, tok, rows, 8, batch_size=4)
    assert [c.token_ids for c in base] == [c.token_ids for c in generate_detailed(model, tok, rows, 8, batch_size=4)]
    assert [c.token_ids for c in tuned] != [c.token_ids for c in base]  # the adapter was on for the tuned prefix


def test_prompt_tuning_and_fixed_cache_configs_do_not_share_a_prefix(tiny):
    from peft import PromptTuningConfig, get_peft_model

    from tunesmith.eval.generate import generate_detailed, generation_config_for, shares_prefix

    model, tok = tiny
    config = generation_config_for(model, tok, 4, 0.0, 1.0)
    assert shares_prefix(model, config)
    config.cache_implementation = "static"
    assert not shares_prefix(model, config)
    soft = get_peft_model(copy_of(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    assert not shares_prefix(soft, soft.generation_config)
    rows = [[{"role": "system", "content": SYSTEM}, *c] for c in convs(3)]
    batched = generate_detailed(soft, tok, rows, 6, batch_size=3)
    assert [c.token_ids for c in batched] == [generate_detailed(soft, tok, [r], 6, batch_size=1)[0].token_ids for r in rows]


def copy_of(model):
    import copy

    return copy.deepcopy(model)


def test_a_model_that_returns_no_cache_object_generates_left_padded(tiny):
    """When the prefix pass hands back no transformers Cache, the batch is generated the usual way, same tokens."""
    from types import SimpleNamespace

    from tunesmith.eval.generate import generate_detailed

    model, tok = tiny

    class NoCache:
        def __init__(self, inner):
            self._inner = inner

        def __call__(self, **kwargs):
            return SimpleNamespace(past_key_values=None)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    rows = [[{"role": "system", "content": SYSTEM}, *c] for c in convs(3)]
    got = generate_detailed(NoCache(model), tok, rows, 6, batch_size=3)
    assert [c.token_ids for c in got] == [generate_detailed(model, tok, [r], 6, batch_size=1)[0].token_ids for r in rows]


def _whole_rows_loss(model, tok, conversations, max_length):
    """The reference: every row run whole, no shared prefix."""
    import torch

    from tunesmith.data.template import IGNORE, tokenize_example

    total, count = 0.0, 0
    for messages in conversations:
        t = tokenize_example(tok, messages, max_length, "truncate")
        labels = torch.tensor([t.labels])
        with torch.inference_mode():
            loss = model(input_ids=torch.tensor([t.input_ids]), labels=labels).loss
        n = int((labels[:, 1:] != IGNORE).sum())
        total, count = total + float(loss) * n, count + n
    return total / count


def test_reference_loss_with_a_shared_system_prompt_equals_whole_rows(tiny, monkeypatch):
    import torch

    import tunesmith.eval.loss as gen

    model, tok = tiny
    rows = [
        [{"role": "system", "content": SYSTEM}, *c, {"role": "assistant", "content": f"answer {i} " * (i + 1)}]
        for i, c in enumerate(convs(4))
    ]
    # A first assistant turn every row shares and trains: the shared prefix stops before its label.
    multi = [
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            *r[1:],
        ]
        for r in rows
    ]
    real = torch.nn.Module.__call__
    prefixes: list[int] = []

    def counting(self, *args, **kwargs):
        if self is model and "labels" not in kwargs:
            prefixes.append(kwargs["input_ids"].shape[-1])
        return real(self, *args, **kwargs)

    for conversations in (rows, multi):
        prefixes.clear()
        monkeypatch.setattr(torch.nn.Module, "__call__", counting)
        got = gen.reference_loss(model, tok, conversations, 512)
        monkeypatch.setattr(torch.nn.Module, "__call__", real)
        assert len(prefixes) == 1 and prefixes[0] >= gen.MIN_SHARED_PREFIX  # the shared part ran once
        assert abs(got - _whole_rows_loss(model, tok, conversations, 512)) < 1e-5
    hello = tok("hello", add_special_tokens=False)["input_ids"][0]
    first = gen.tokenize_example(tok, multi[0], 512, "truncate")
    assert prefixes[0] <= first.input_ids.index(hello)  # the trained first answer is not inside the prefix
