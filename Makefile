# Two commands for a fresh machine with only Python: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel here; users who bring their own torch install with plain `pip install .`
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
RUNS ?= runs

.PHONY: install test train bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

train: $(VENV)/.installed
	$(VENV)/bin/dlp train -d shapes --preset shapes-quick --output-dir $(RUNS) --name quickstart

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
