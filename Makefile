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

# The demo's real-window test runs under a virtual X server (Xvfb). When it is missing, `make test` installs the
# Debian package xvfb with apt-get, saying so first; that needs root. Without root or apt-get (or with
# INSTALL_XVFB=0) nothing is installed: one line says that the window test will be skipped, and the tests run.
INSTALL_XVFB ?= 1
XVFB_SKIP := the demo's real-window test will be skipped

xvfb:
	@if command -v Xvfb >/dev/null 2>&1; then :; \
	elif [ "$(INSTALL_XVFB)" != 1 ]; then \
		echo "Xvfb is not installed (INSTALL_XVFB=$(INSTALL_XVFB)): $(XVFB_SKIP)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "Xvfb is not installed and there is no apt-get to install it with: $(XVFB_SKIP)"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "Xvfb is not installed and installing it needs root (sudo apt-get install xvfb): $(XVFB_SKIP)"; \
	else \
		echo "installing Xvfb (Debian package xvfb) for the demo's real-window test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb >/dev/null; } || \
			echo "installing xvfb with apt-get failed: $(XVFB_SKIP)"; \
	fi

test: $(VENV)/.installed xvfb
	$(PY) -m pytest -q

train: $(VENV)/.installed
	$(VENV)/bin/dlp train --preset shapes-quick --output-dir $(RUNS)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
