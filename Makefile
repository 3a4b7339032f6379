# Set-up is part of every target: the virtual environment is created or reused, and `.[test]` installed once
# (again whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdjax-installed

.PHONY: demo test clean sox

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdjax demo --workdir runs/demo

test: $(STAMP) sox
	$(PY) -m pytest -q

# The SoX binary for the SUPERB ASV preprocessing tests (Debian's package; needs root, as on CI).
sox:
	@command -v sox >/dev/null || (apt-get update -qq && apt-get install -y -qq sox >/dev/null) || \
		echo "warning: SoX is not installed and could not be: the voxceleb1/superb tests will be skipped"

clean:
	rm -rf $(VENV) runs
