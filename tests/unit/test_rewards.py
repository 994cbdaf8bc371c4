"""GRPO rewards: built-ins score text and chat-shaped completions; user functions load from a module or a file."""

import pytest

from tunesmith.errors import RecipeError
from tunesmith.method_sections import RewardSpec
from tunesmith.train import rewards


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_json_valid_accepts_fences_and_chat_completions():
    out = rewards.json_valid(None, ['{"a": 1}', chat('```json\n{"a": 1}\n```'), "Sure! {a: 1}", chat("")])
    assert out == [1.0, 1.0, 0.0, 0.0]


def test_json_schema_valid():
    fn = rewards.build([RewardSpec(type="json_schema_valid", json_schema={"type": "object", "required": ["sum"]})])[0]
    assert fn(None, ['{"sum": 3}', '{"total": 3}', "3"]) == [1.0, 0.0, 0.0]


def test_exact_match_is_eval_exact_match():
    # Whitespace-normalised text, as `tunesmith eval` scores it: reordered JSON keys are not an exact match there.
    fn = rewards.make_exact_match("reference")
    out = fn(
        None,
        ['{"a":  1, "b": 2}', '{"b": 2, "a": 1}', "Paris", "paris", '{"a": 2}'],
        reference=['{"a": 1, "b": 2}', '{"a": 1, "b": 2}', "Paris", "Paris", '{"a": 1}'],
    )
    assert out == [1.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(KeyError, match="no `answer` column"):
        rewards.make_exact_match("answer")(None, ["x"], reference=["x"])


def test_regex_and_length_penalty():
    assert rewards.make_regex(r"\{.*\}")(None, ["{x}", "x {x}"]) == [1.0, 0.0]
    assert rewards.make_length_penalty(10)(None, ["short", "x" * 15, "x" * 20]) == [0.0, -0.5, -1.0]


def test_user_function_from_module_and_file(tmp_path):
    assert rewards.load_function("json:dumps") is __import__("json").dumps
    (tmp_path / "mine.py").write_text("def score(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    fn = rewards.load_function(f"{tmp_path / 'mine.py'}:score")
    assert fn(None, ["a", "b"]) == [1.0, 1.0]
    with pytest.raises(RecipeError, match="no function"):
        rewards.load_function(f"{tmp_path / 'mine.py'}:missing")


def test_shorthand_strings():
    assert RewardSpec.model_validate("json_valid").type == "json_valid"
    custom = RewardSpec.model_validate("pkg.mod:fn")
    assert custom.type == "custom" and custom.function == "pkg.mod:fn"


def test_reward_files_of_one_name_in_two_projects_are_two_modules(tmp_path):
    # Two imported projects in one process, each with its own grader_reward.py: each keeps its own function.
    for name, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "grader_reward.py").write_text(
            f"def reward(prompts, completions, **kw):\n    return [{value}] * len(completions)\n"
        )
    first = rewards.load_function(f"{tmp_path / 'a' / 'grader_reward.py'}:reward")
    second = rewards.load_function(f"{tmp_path / 'b' / 'grader_reward.py'}:reward")
    assert first(None, ["x"]) == [1.0] and second(None, ["x"]) == [2.0]
    # the same file named two ways (relative, absolute) is one module
    again = rewards.load_function(f"{tmp_path / 'a' / '..' / 'a' / 'grader_reward.py'}:reward")
    assert again is first
