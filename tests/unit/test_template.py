import pytest
from transformers import AutoTokenizer

from helpers import TINY_TOKENIZER
from tunesmith.data.template import (
    IGNORE,
    prompt_messages,
    reference,
    render_prompt,
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
