# One entry point for a fresh machine: `make test` builds .venv, installs refseg and runs
# the suite; `make demo` trains instalign-tiny on the synthetic benchmark and reports.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.13.0: the CPU build where pip finds a local CPU wheel; elsewhere PyPI's Linux
	# wheel is the CUDA one, so pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
	$(PY) -m pip install --quiet "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	rm -rf runs/demo  # each `make demo` starts afresh
	$(VENV)/bin/refseg demo --out runs/demo

clean:
	rm -rf $(VENV) runs
