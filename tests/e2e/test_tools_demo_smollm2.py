"""`tunesmith demo --task tools` through the real CLI on the real embedded SmolLM2: the tuned run calls the right
functions with the right arguments on held-out requests more often than the base, and the served two-step loop
completes through the official openai client (the whole demo, about the time the README states)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_the_tools_demo(tmp_path):
    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", "demo", "--task", "tools", "--dir", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "held-out requests (values never in train)" in out and "arguments exact (as JSON)" in out
    assert "got the result, answered (tool_calls then stop)" in out
    report = json.loads((tmp_path / "demo" / "runs" / "tools" / "eval" / "report.json").read_text())
    base, tuned = report["summary"]["base"], report["summary"]["tuned"]
    assert report["tool_mode"] and tuned["tool_arguments_match"] > base["tool_arguments_match"]
    assert tuned["tool_call_valid"] >= base["tool_call_valid"]
    assert set(report["per_tool"]["tuned"]) >= {"lookup_order", "refund_order"}
