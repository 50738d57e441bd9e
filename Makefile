# Set-up and the two everyday commands. `make demo` and `make test` each create the virtual environment on
# first use (CPU PyTorch, no internet beyond the package index), so on a fresh clone either one is the whole set-up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench clean-venv
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build first: an unpinned torch would pull a multi-GB CUDA build (GPU users: see README).
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	# The test install includes the pyserini extra (Lucene through its bundled Java runtime), so CI runs the Lucene path,
	# and the pyterrier extra (PyTerrier's Python side), so CI runs the PyTerrier reranker against the real package.
	$(PY) -m pip install -q -e ".[dev,pyserini,pyterrier]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/maw-rerank demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_maw_layer.py

clean-venv:
	rm -rf $(VENV)
