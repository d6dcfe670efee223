# attnsearch from a fresh clone (README "Quick start"):
#   make quickstart   set up, then run the quickstart study (jobs/quickstart.yaml)
#   make test         set up (with the optional DALI extra where it installs), then the full tests
#   make test-fast    set up, then the tests with -m "not slow" (none that starts Ray or a server)
#   make lint         ruff (pinned in docker/constraints.txt, the `test` extra), installed into $(VENV) if missing
#   make gpu-check    on a machine with one CUDA GPU: the CUDA-only tests and the GPU benchmarks, in under 8
#                     minutes, results under benchmarks/results/gpu/
# Setup (make setup) makes a virtual environment in $(VENV), installs torch for this machine, then the project with
# every extra, pinned by docker/constraints.txt; it reruns only when pyproject.toml or docker/constraints.txt change.
# Torch: without a working nvidia-smi, PyTorch's CPU wheels if that index answers within 3 s, otherwise pip's default
# index (what a GPU machine uses). Overrides: VENV=, PYTHON=, TORCH_INDEX_URL=, PYTEST_ARGS=.

VENV ?= .venv
PYTHON ?= python3
TORCH_INDEX_URL ?=
CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.attnsearch-setup
DALI_STAMP := $(VENV)/.attnsearch-dali
export PATH := $(abspath $(BIN)):$(PATH)

# The whole probe (DNS included) is bounded by the thread's join: no pip timeouts against an unreachable index.
PROBE := import threading, urllib.request as u; ok = []; \
	t = threading.Thread(target=lambda: ok.append(u.urlopen("$(CPU_INDEX_URL)/", timeout=3).status), daemon=True); \
	t.start(); t.join(3); raise SystemExit(ok != [200])

.PHONY: setup venv quickstart test test-fast lint gpu-check gpu-probe
setup venv: $(STAMP)

$(STAMP): pyproject.toml docker/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@index='$(TORCH_INDEX_URL)'; \
	if [ -z "$$index" ] && ! nvidia-smi >/dev/null 2>&1 && $(BIN)/python -c '$(PROBE)' 2>/dev/null; then \
		index='$(CPU_INDEX_URL)'; fi; \
	echo "torch: $(TORCH) from $${index:-the default index}"; \
	$(BIN)/python -m pip install -q $(TORCH) $${index:+--index-url "$$index"}
	$(BIN)/python -m pip install -q -e ".[all]" -c docker/constraints.txt
	touch $@

quickstart: setup
	$(BIN)/attnsearch run jobs/quickstart.yaml

# The tests also install the optional DALI extra where its wheel exists (Linux x86_64), so that the DALI pipeline's
# tests run on its CPU backend instead of skipping, and Syne Tune (no dependencies: the peer of
# benchmarks/search_quality.py and benchmarks/replay.py, never a dependency of attnsearch itself) for
# tests/test_peer_synetune.py and tests/test_replay.py; huggingface_hub only because syne_tune.blackbox_repository
# (its simulator backend over a table) imports it.
$(DALI_STAMP): $(STAMP)
	@if [ "$$(uname -sm)" = "Linux x86_64" ]; then \
		$(BIN)/python -m pip install -q -e ".[dali]" -c docker/constraints.txt; \
	else echo "no DALI wheel for $$(uname -sm): its tests will skip"; fi
	$(BIN)/python -m pip install -q --no-deps syne-tune==0.16.0 dill==0.4.1
	$(BIN)/python -m pip install -q huggingface_hub==2.4.0
	touch $@

test: setup $(DALI_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff from the pinned version; only what the linter needs when the venv lacks it (no full setup)
RUFF_PIN = $$(grep -E '^ruff==' docker/constraints.txt)
lint:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m ruff --version >/dev/null 2>&1 || $(BIN)/python -m pip install -q "$(RUFF_PIN)"
	$(BIN)/python -m ruff check .

# One call on a GPU machine measures what CPUs cannot: tests/test_gpu.py (AMP + channels_last training, latency in
# the trial's precision, DALI decoding on the GPU: the `cuda` marker), benchmarks/latency_vs_flops.py and
# benchmarks/trial_throughput.py (torch and DALI-mixed loaders against the step). Each step has its own time limit
# (2 + 3 + 2.5 minutes); the results go to benchmarks/results/gpu/. Refused at once without an NVIDIA GPU.
GPU_RESULTS := benchmarks/results/gpu
gpu-probe:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make gpu-check: no NVIDIA GPU here (nvidia-smi -L failed); run it on a machine with one CUDA GPU" >&2; exit 1; }

gpu-check: gpu-probe setup $(DALI_STAMP)
	@$(BIN)/python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "make gpu-check: torch " + torch.__version__ + " sees no CUDA device (a CPU-only wheel? reinstall with TORCH_INDEX_URL=)")'
	mkdir -p $(GPU_RESULTS)
	timeout 120 $(BIN)/python -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_gpu.py --junitxml=$(GPU_RESULTS)/cuda_tests.xml
	timeout 180 $(BIN)/python benchmarks/latency_vs_flops.py --device cuda --out $(GPU_RESULTS)/latency_vs_flops.md
	timeout 150 $(BIN)/python benchmarks/trial_throughput.py --device cuda --out $(GPU_RESULTS)/trial_throughput.md
	@echo "gpu-check: results in $(GPU_RESULTS)/"
