# Two commands do all set-up (see README):
#   make run   - create .venv, install, run the main job (rational run --preset demo)
#   make test  - create/reuse .venv, install with test extras, run pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= demo
# The CPU build of torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: run test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	# nanoGCG pins transformers<=4.47.1 but runs on transformers 5; --no-deps keeps ours (docs/redteam.md)
	$(BIN)/pip install -q --no-deps nanogcg==0.3.0
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/rational run --preset $(PRESET)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
