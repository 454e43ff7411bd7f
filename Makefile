# rewardlab — the two commands a user needs: `make study` and `make test`.
#
# TORCH is the torch requirement installed before everything else. The default is a CPU
# build that lies on this project's machines; for a CUDA build use e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
STUDY_ARGS ?=

.PHONY: test study lint bench clean-venv

# The stamp file records a finished install, so an interrupted install is redone.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

study: $(VENV)/.installed
	$(VENV)/bin/rewardlab study $(STUDY_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check rewardlab tests bench

clean-venv:
	rm -rf $(VENV)
