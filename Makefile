# The two commands of the README: `make demo` and `make test`. Each sets up what it needs first.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test setup

setup:
	scripts/setup.sh $(VENV) test

demo: setup
	$(VENV)/bin/python -m pipeline demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
