# Two commands for a fresh machine with only Python: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel here; users who bring their own torch install with plain `pip install .`
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
RUNS ?= runs

.PHONY: install test train bench clean xvfb

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The demo's real-window test runs under a virtual X server; install it when missing (needs root, else skipped).
xvfb:
	@command -v Xvfb >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb >/dev/null; } || \
		echo "Xvfb is not available: the demo window test will be skipped"

test: $(VENV)/.installed xvfb
	$(PY) -m pytest -q

train: $(VENV)/.installed
	$(VENV)/bin/dlp train --preset shapes-quick --output-dir $(RUNS)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
