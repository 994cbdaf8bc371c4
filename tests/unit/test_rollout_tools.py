"""Rollouts on traffic that offers tools: a live server and the official openai client send requests with `tools`;
the candidate's calls are judged against the primary's by the registry's own tool metrics (no reference needed:
parsable calls, schema-valid arguments, unparsable count), shown in the rollout's table, and a candidate whose calls
stop parsing is rolled back (canary) or seen in its shadow copies, which run with the request's tools."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port, hand_run, live_server
from typer.testing import CliRunner

from family_helpers import scripted
from tool_helpers import TOOLS, hermes, tiny_tool_model
from tunesmith.cli import app
from tunesmith.monitor import rollout as ro
from tunesmith.serve.rollout import candidate_name, routed
from tunesmith.serve.store import Message, RequestLog, RequestRow

KEY = "ts-tools-key"
GOOD = hermes("lookup_order", {"order_id": "A1"})
BROKEN = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": '


def _rows(folder: Path) -> list[RequestRow]:
    with RequestLog.open(folder) as log:
        return list(log.iter_requests())


def _wait(condition, what: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := condition():
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _script(engine) -> None:
    """The primary writes a call that parses, the candidate one that does not (chosen per active adapter)."""
    model, tok = engine.model, engine.tokenizer
    scripted(model, tok, GOOD, "<|im_end|>")
    good = model.generate
    scripted(model, tok, BROKEN, "<|im_end|>")
    broken = model.generate
    cand = engine.resolve(candidate_name("support")).peft_name
    model.generate = lambda **kw: (broken if model.active_adapter == cand else good)(**kw)


@pytest.fixture
def served(tmp_path):
    """A tiny ChatML base, runs v1 (served through adapters/support) and v2 (the candidate), the prepared app."""
    from tunesmith.serve.server import ServeOptions, prepare, serve_dir

    base = tiny_tool_model(tmp_path / "base", "chatml")
    v1, v2 = (hand_run(tmp_path / "runs", name, base) for name in ("v1", "v2"))
    folder = serve_dir(tmp_path / "serve")
    (folder / "adapters").mkdir()
    (folder / "adapters" / "support").symlink_to(v1)
    opts = ServeOptions(str(base), [f"support={folder / 'adapters' / 'support'}"], port=free_port(), dir=folder,
                        api_keys=[KEY], admin_keys=["ts-admin"], max_batch=4)  # fmt: skip
    prepared = prepare(opts)
    prepared.app.state.tunesmith.rollouts.poll_s = 0.1
    return folder, prepared.app, opts.port, v2


def test_a_canary_whose_calls_stop_parsing_is_rolled_back_and_its_shadow_is_judged_the_same(served):
    import openai

    folder, api, port, v2 = served
    assert ro.DEFAULT_GATES["live_tool_call_valid_drop"] == "<=0.02"  # every rollout judges calls by default
    with live_server(api, port=port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        health = lambda: httpx.get(url + "/health").json()
        state = api.state.tunesmith
        ask = lambda i: client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": f"Where is order A{i}?"}], tools=TOOLS, max_tokens=60
        )

        gates = ["live_tool_call_valid_drop=<=0.02", "live_error_rate_increase=<=0.5"]
        ro.start(folder, "support", v2, share=0.5, min_requests=3, gates=gates)
        _wait(lambda: "support" in health().get("rollouts", {}), "the server to pick the rollout up")
        _script(state.engine)
        answers = []
        # routing hashes each response id: ask until both sides have answered (3 canary, at least 1 primary)
        while len(answers) < 60 and (sum(routed(a.id, 0.5) for a in answers) < 3 or all(routed(a.id, 0.5) for a in answers)):
            answers.append(ask(len(answers)))
        canary = [a for a in answers if routed(a.id, 0.5)]
        primary = [a for a in answers if not routed(a.id, 0.5)]
        assert primary and all(a.choices[0].finish_reason == "tool_calls" for a in primary)
        assert all(a.choices[0].message.content.startswith("<tool_call>") for a in canary)  # returned as content
        metrics = httpx.get(url + "/metrics").text
        assert f'tunesmith_tool_calls_unparsable_total{{model="support"}} {len(canary)}.0' in metrics

        res = CliRunner().invoke(app, ["rollout", str(folder), "support", "--check"])
        assert res.exit_code == ro.ROLLED_BACK_EXIT, res.output
        assert "FAIL live_tool_call_valid_drop" in res.output and "tool_call_valid" in res.output  # the figures table
        decision = ro.settle(folder, "support")
        assert decision.status == "rolled_back" and "live_tool_call_valid_drop 1.0 broke <= 0.02" in decision.reason
        got = decision.live
        assert got["primary"]["tool_call_valid"] == 1.0 and got["primary"]["tool_arguments_valid"] == 1.0
        assert got["canary"]["tool_call_valid"] == 0.0 and got["canary"]["tool_calls_unparsable"] == len(canary)
        assert got["canary"]["tool_requests"] == len(canary) and got["primary"]["tool_calls_unparsable"] == 0
        assert got["canary"]["tool_arguments_valid"] == 0.0  # a call that does not parse has no valid arguments

        # shadow: each request copied to the candidate with its tools; its broken calls logged, never returned
        _wait(lambda: "rollouts" not in health(), "the server to end the canary")
        ro.start(folder, "support", v2, share=1.0, mode="shadow", min_requests=2, gates=gates)
        _wait(lambda: health().get("rollouts", {}).get("support", {}).get("mode") == "shadow", "the shadow rollout")
        _script(state.engine)
        before = len(_rows(folder))
        asked = [ask(i) for i in range(2)]
        assert all(a.choices[0].finish_reason == "tool_calls" for a in asked)
        shadows = _wait(
            lambda: (s := [r for r in _rows(folder)[before:] if r.variant == "shadow"]) and len(s) >= 2 and s, "2 shadows"
        )
        assert all(r.tools == TOOLS and r.output.startswith("<tool_call>") and not r.tool_calls for r in shadows)
        decision = ro.check(folder, "support")
        assert decision.action == "rolled_back" and "live_tool_call_valid_drop" in decision.rollout.reason
        assert decision.figures["shadow"]["tool_calls_unparsable"] >= 2
        counted = httpx.get(url + "/metrics").text  # shadow copies are no client's: not counted as served calls
        assert f'tunesmith_tool_calls_unparsable_total{{model="support"}} {len(canary)}.0' in counted


def test_the_tool_gate_is_skipped_where_no_request_offered_tools(tmp_path, tiny_model_dir):
    from tunesmith.serve.server import serve_dir

    v1, v2 = (hand_run(tmp_path / "runs", name, tiny_model_dir) for name in ("v1", "v2"))
    folder = serve_dir(tmp_path / "serve")
    (folder / "adapters").mkdir()
    (folder / "adapters" / "support").symlink_to(v1)
    r = ro.start(folder, "support", v2, share=0.2, min_requests=2, gates=["live_tool_call_valid_drop=<=0.02"])
    with RequestLog.open(folder, create=True) as log:
        for i in range(2):
            for variant in ("primary", "canary"):
                log.add_request(RequestRow(request_id=f"{variant}{i}", time=r.started + timedelta(seconds=1 + i),
                                           model="support", messages=[Message(role="user", content="hi")],
                                           output="hello", latency_s=0.5, variant=variant))  # fmt: skip
    decision = ro.check(folder, "support")
    (gate,) = decision.results
    assert decision.action == "promoted" and gate.status == "skip" and "no request offered tools" in gate.detail
