# ProdSegmenter: `make demo` and `make test` install what they need, idempotently, then run.
#
# Two environments: .venv (the project: gateway, clients, training, tests) and .venv-triton (the
# embedded Triton server and its python backend, which needs numpy < 2: see ../shared/NOTES.md).

PYTHON ?= python3
VENV := .venv
TRITON_VENV := .venv-triton
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: install demo test test-fast lint serve loadtest bench perf-analyzer clean docs-screens

install: $(VENV)/.installed $(TRITON_VENV)/.installed tools

# The browser tests (tests/web) drive Debian's chromium through Playwright; never `playwright install`.
# Installed with apt when missing and we are root; otherwise those tests skip and say what to install.
.PHONY: browser
install: browser
browser:
	@if [ ! -x /usr/lib/chromium/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium fonts-dejavu-core; \
	fi

# Kubernetes/monitoring tooling (helm, kubectl, promtool, ...) into .tools/: see infra/tools.mk.
include infra/tools.mk

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ProdSegmenter needs Python 3.11, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) pip==25.3
	# torch is pinned by the constraints file: unpinned, pip would pull several GB of CUDA wheels.
	$(VENV)/bin/pip install $(PIP_FLAGS) -c requirements/constraints.txt -e '.[training,loadtest,dev]'
	touch $@

$(TRITON_VENV)/.installed: requirements/triton.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install $(PIP_FLAGS) pip==25.3
	$(TRITON_VENV)/bin/pip install $(PIP_FLAGS) -r requirements/triton.txt
	touch $@

demo: install
	$(VENV)/bin/prodseg demo

serve: install
	$(VENV)/bin/prodseg serve

# A bounded headless Locust run. Without HOST it starts the embedded stack; against a cluster:
#   make loadtest HOST=https://gateway.example TRITON_GRPC=triton.example:8001 STEPS=25,50,100,120
STEPS ?= 1,2,3,4
STEP_SECONDS ?= 10
FPS ?= 30
loadtest: install
	$(VENV)/bin/python -m loadtest.run --prometheus --steps $(STEPS) --step-seconds $(STEP_SECONDS) --fps $(FPS) \
		$(if $(HOST),--host $(HOST) --triton-grpc $(TRITON_GRPC) $(if $(TRITON_METRICS),--triton-metrics $(TRITON_METRICS)))

# A long steady run, NOT part of `make test` (30 minutes; run it on an otherwise idle machine): cameras
# and uploads at ~80% of the capacity a short ramp measures, every stack process's RSS, descriptors and
# files sampled; results in benchmarks/results/soak.json and soak.png. `make soak SOAK_MINUTES=5`.
.PHONY: soak
SOAK_MINUTES ?= 30
soak: install
	$(VENV)/bin/python -m loadtest.soak --minutes $(SOAK_MINUTES) --out benchmarks/results

# The benchmark suite (minutes; run it on an otherwise idle machine): results in benchmarks/results/.
perf-analyzer: install
	bash benchmarks/install-perf-analyzer.sh

bench: install perf-analyzer
	$(VENV)/bin/python -m benchmarks.suite

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/python -m pytest -q -ra

# The browser tests, writing their screenshots into docs/ and the live page's figures into
# benchmarks/results/web_live.json (a plain test run writes them under out/docs/).
docs-screens: install
	PRODSEG_PUBLISH_SCREENS=1 $(VENV)/bin/python -m pytest -q tests/web

# Everything but the tests that start Triton or train (seconds instead of minutes).
test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not triton and not slow"

clean:
	rm -rf out .pytest_cache
