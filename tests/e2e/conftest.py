"""One imported SmolLM2 for the e2e modules that only use it (test_cli_smollm2 imports its own: it tests `models pull`)."""

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def smollm2_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("tunesmith-home")
    env = {**os.environ, "TUNESMITH_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "tunesmith", "models", "pull", "smollm2-135m-instruct"],
                         cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return env
