import pytest
from transformers import AutoTokenizer

from helpers import FAMILY_FIXTURES, TINY_TOKENIZER, family_name, family_tokenizer, trained_runs
from tunesmith import families
from tunesmith.data.template import (
    IGNORE,
    prompt_messages,
    reference,
    render_prompt,
    render_turns,
    thinking_for,
    tokenize_example,
)


@pytest.fixture(scope="module")
def tok():
    t = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    assert t.pad_token_id == t.eos_token_id  # the hard case: pad == EOS
    return t


CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def trained_text(tok, t):
    return tok.decode([i for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE])


def test_prompt_tokens_masked_and_eos_trained(tok):
    t = tokenize_example(tok, CONV)
    assert trained_text(tok, t) == "Hello!<|im_end|>4<|im_end|>"
    # Every EOS that closes an assistant turn is a label even though pad == EOS.
    eos_positions = [j for j, i in enumerate(t.input_ids) if i == tok.eos_token_id]
    labelled_eos = [j for j in eos_positions if t.labels[j] == tok.eos_token_id]
    assert len(labelled_eos) == 2
    # System/user text is never trained.
    assert "Be brief" not in trained_text(tok, t) and "Hi there" not in trained_text(tok, t)
    assert t.labels[0] == IGNORE


def test_weight_zero_turn_is_not_trained(tok):
    conv = [dict(m) for m in CONV]
    conv[2]["weight"] = 0
    t = tokenize_example(tok, conv)
    assert trained_text(tok, t) == "4<|im_end|>"


def test_overlong_policies_are_counted(tok):
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    dropped = tokenize_example(tok, long, max_length=64, overlong="drop")
    assert dropped.dropped == "overlong" and dropped.n_tokens > 64
    truncated = tokenize_example(tok, long, max_length=64, overlong="truncate")
    # Truncation cut away the only answer, so the row has nothing to learn and is dropped.
    assert truncated.dropped == "no_trained_tokens" and truncated.tokens_lost == truncated.n_tokens - 64
    with pytest.raises(ValueError, match="over max_length=64"):
        tokenize_example(tok, long, max_length=64, overlong="error")


def test_truncate_keeps_rows_with_trained_tokens(tok):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 100}]
    t = tokenize_example(tok, conv, max_length=40, overlong="truncate")
    assert t.dropped is None and len(t.input_ids) == 40 and t.tokens_lost > 0 and t.n_trained > 0


def test_prompt_and_reference(tok):
    assert reference(CONV) == "4"
    assert prompt_messages(CONV)[-1] == {"role": "user", "content": "2+2?"}
    assert render_prompt(tok, prompt_messages(CONV)).endswith("<|im_start|>assistant\n")


# ---- every family: masks, prompt parity, system handling -------------------------------------------------------


# What each family trains on CONV: every assistant turn's content and its end-of-turn token, nothing else.
# Qwen 3 renders the first answer without the <think> block it is generated with, and Mistral moves the system
# prompt to the last user turn: those first answers sit in a context inference never builds, so they are not
# trained (and counted).
EXPECTED = {
    "llama3": ["Hello!<|eot_id|>", "4<|eot_id|>"],
    "qwen2.5": ["Hello!<|im_end|>", "4<|im_end|>"],
    "qwen3": ["4<|im_end|>"],
    "gemma3": ["Hello!<end_of_turn>", "4<end_of_turn>"],
    "gemma2": ["Hello!<end_of_turn>", "4<end_of_turn>"],
    "mistral": [" 4</s>"],
    "phi3": ["Hello!<|end|>", "4<|end|>"],
    "phi4": ["Hello!<|im_end|>", "4<|im_end|>"],
    "chatml": ["Hello!<|im_end|>", "4<|im_end|>"],
    "unknown": [" Hello!</s>", " 4</s>"],
}
assert set(EXPECTED) == set(FAMILY_FIXTURES)


@pytest.fixture(scope="module")
def family_toks():
    return {name: family_tokenizer(name) for name in FAMILY_FIXTURES}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_family_trains_answers_and_end_of_turn_only(family_toks, name):
    tok = family_toks[name]
    t = tokenize_example(tok, CONV)
    assert trained_runs(tok, t.input_ids, t.labels) == EXPECTED[name]
    assert t.counts["turns_trained"] == len(EXPECTED[name])
    assert t.counts.get("turns_not_trainable", 0) == 2 - len(EXPECTED[name])
    assert t.labels[0] == IGNORE  # BOS / first header never trained
    ends = families.get(family_name(name)).end_of_turn_ids(tok)
    assert t.labels[-1] in ends or tok.decode(t.input_ids[-1:]).strip() in ("", "<|endoftext|>")  # nothing after


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_family_prompt_is_the_training_prefix_byte_and_token(family_toks, name):
    """render_prompt (what eval, chat, serve and the studio send) is exactly the text and the tokens training
    put before the last answer."""
    tok = family_toks[name]
    rendered = render_turns(tok, CONV)
    thinking = thinking_for(CONV, tok)
    prompt = render_prompt(tok, prompt_messages(CONV), thinking=thinking)
    assert rendered.text[: rendered.split_at] == prompt
    # Qwen 3 with thinking off (no trace to learn) ends the prompt with the empty trace the template inserts.
    empty_trace = "<think>\n\n</think>\n\n" if thinking is False else ""
    assert prompt.endswith(families.get(family_name(name)).generation_prompt + empty_trace)
    t = tokenize_example(tok, CONV)
    first_trained = (
        max(j for j, lab in enumerate(t.labels) if lab == IGNORE and j < len(t.labels) - 1 and t.labels[j + 1] != IGNORE) + 1
    )
    assert tok(prompt, add_special_tokens=False)["input_ids"] == t.input_ids[:first_trained]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_trained_turn_starts_after_its_own_inference_prompt(family_toks, name):
    tok = family_toks[name]
    rendered = render_turns(tok, CONV)
    answers = [i for i, m in enumerate(CONV) if m["role"] == "assistant"]
    prompts = [render_prompt(tok, CONV[:i], thinking=thinking_for(CONV[: i + 1], tok)) for i in answers]
    for start, _end in rendered.spans:
        assert any(rendered.text[:start] == p for p in prompts)


def test_mistral_without_a_system_prompt_trains_every_turn(family_toks):
    tok = family_toks["mistral"]
    t = tokenize_example(tok, CONV[1:])
    assert trained_runs(tok, t.input_ids, t.labels) == [" Hello!</s>", " 4</s>"]


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_gemma_folds_the_system_prompt_into_the_first_user_turn(family_toks, name):
    tok = family_toks[name]
    text = render_turns(tok, CONV).text
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n")
    t = tokenize_example(tok, CONV)
    assert not any("Be brief" in run for run in trained_runs(tok, t.input_ids, t.labels))


def test_gemma2_template_refuses_a_system_turn_that_tunesmith_folds(family_toks):
    from jinja2 import TemplateError

    tok = family_toks["gemma2"]
    with pytest.raises(TemplateError, match="System role not supported"):
        tok.apply_chat_template(CONV, tokenize=False)
    # Both Gemma templates give the same bytes once the system prompt is folded.
    assert render_turns(tok, CONV).text == render_turns(family_toks["gemma3"], CONV).text


def test_llama3_date_is_pinned_so_prompts_do_not_change_with_the_day(family_toks):
    tok = family_toks["llama3"]
    own = tok.apply_chat_template(prompt_messages(CONV), tokenize=False, add_generation_prompt=True)
    ours = render_prompt(tok, prompt_messages(CONV))
    assert "Today Date: 26 Jul 2024\n" in ours
    assert own.replace(own.split("Today Date: ")[1].split("\n")[0], "26 Jul 2024") == ours


def test_unknown_family_appends_and_trains_eos_where_the_template_leaves_the_turn_open(family_toks):
    tok = family_toks["unknown"]
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert not tok.apply_chat_template(conv, tokenize=False).endswith("</s>")
    t = tokenize_example(tok, conv)
    assert t.input_ids[-1] == tok.eos_token_id and t.labels[-1] == tok.eos_token_id
    assert trained_runs(tok, t.input_ids, t.labels) == [" Hello!</s>"]


def test_expand_turns_makes_every_answer_trainable(family_toks):
    from tunesmith.data.template import expand_turns

    tok = family_toks["qwen3"]
    rows = expand_turns(CONV)
    assert [r[-1]["content"] for r in rows] == ["Hello!", "4"]
    runs = [trained_runs(tok, t.input_ids, t.labels) for t in (tokenize_example(tok, r) for r in rows)]
    assert runs == [["Hello!<|im_end|>"], ["4<|im_end|>"]]


def test_a_weight_zero_turn_is_context_in_every_family(family_toks):
    conv = [dict(m) for m in CONV[1:]]
    conv[1]["weight"] = 0
    for name in ("llama3", "gemma3", "phi3", "unknown"):
        t = tokenize_example(family_toks[name], conv)
        assert not any("Hello" in r for r in trained_runs(family_toks[name], t.input_ids, t.labels)), name
