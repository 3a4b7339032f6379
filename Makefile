# Set-up is part of every target: the virtual environment is created or reused, and what the target needs installed
# once (again whenever pyproject.toml changes): the demo needs kdjax and its export extra (the report's int8 line),
# the tests also torch and transformers (the references), so `make demo` alone skips them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.kdjax-demo-installed
TEST_STAMP := $(VENV)/.kdjax-test-installed

.PHONY: demo test clean sox

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[export]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/kdjax demo --workdir runs/demo

test: $(TEST_STAMP) sox
	$(PY) -m pytest -q

# The SoX binary for the SUPERB ASV preprocessing tests (Debian's package; needs root, as on CI).
sox:
	@command -v sox >/dev/null || (apt-get update -qq && apt-get install -y -qq sox >/dev/null) || \
		echo "warning: SoX is not installed and could not be: the voxceleb1/superb tests will be skipped"

clean:
	rm -rf $(VENV) runs
