# t5jax: `make test` and `make pretrain` set up .venv themselves on first use.
# Versions come from requirements.lock (pinned, tested together).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 3
export USE_TF ?= 0

.PHONY: install test convert-help clean-venv

install: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[data,test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
