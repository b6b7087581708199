# Two commands for a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DATA := data/demo2d
DEMO_RUN := runs/demo

.PHONY: install test test-all lint format demo demo-clean clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# The formatter and linter (ruff, configured in pyproject.toml); tests/test_style.py runs the same checks.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Everything, the exhaustive kernel sweeps and long model checks included (~1 h on 2 cores).
test-all: $(STAMP)
	$(PY) -m pytest -q tests

# Generate the phantoms, train lightseg_tiny, predict one case, export, then evaluate:
# the last lines printed are the test-split Dice per class, the mean and the speed.
demo: $(STAMP)
	$(PY) -m jaxseg.data.synthetic --dims 2 --num-cases 60 --num-test 4 --shape 128,128 --seed 0 --out $(DEMO_DATA)
	$(PY) -m jaxseg.train --config configs/demo.py --workdir $(DEMO_RUN)
	$(PY) -m jaxseg.predict --workdir $(DEMO_RUN) --input $(DEMO_DATA)/imagesTs/phantom_060.nii.gz --output $(DEMO_RUN)/predictions/phantom_060.nii.gz
	$(PY) -m jaxseg.export --workdir $(DEMO_RUN) --output $(DEMO_RUN)/saved_model
	$(PY) -m jaxseg.evaluate --workdir $(DEMO_RUN) --split test

demo-clean:
	rm -rf $(DEMO_DATA) $(DEMO_RUN)

clean: demo-clean
	rm -rf $(VENV) .pytest_cache
