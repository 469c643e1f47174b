# embedlake: `make demo` runs the main job on the embedded default; `make test` runs the suite.
# Both create the virtual environment on first use. torch is pinned to the CPU wheel here;
# GPU users pass their own: `make demo TORCH_SPEC='torch'` (or install torch in .venv first).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_LAKE ?= demo_lake
DEMO_QUERY ?= fast compression library for large files
export RAY_DASHBOARD_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-test demo test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/embedlake embed data/sample/ $(DEMO_LAKE) --config conf/demo.yaml
	$(VENV)/bin/embedlake search $(DEMO_LAKE) --table docs --query "$(DEMO_QUERY)" --k 5

test: install-test
	$(VENV)/bin/python -m pytest -q

lint: install-test
	$(VENV)/bin/ruff check operators pipelines tests benchmarks

bench: install-test
	$(VENV)/bin/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(DEMO_LAKE) .pytest_cache
