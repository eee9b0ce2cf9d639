# t5pod: every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast lock clean

install: $(STAMP)

# The stamp is rebuilt whenever the declared or pinned dependencies change.
$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Skips the tests marked slow (CI runs them all through `make test`).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Rewrites the pin list from the current environment.
lock: install
	( sed -n '1,2p' requirements.lock; $(BIN)/pip freeze --exclude-editable | grep -v '^t5pod' | sed 's/+cpu$$//' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
