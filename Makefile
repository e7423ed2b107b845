# Flowpoint: `make run` and `make test` are the quick start; see README.md.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .flowpoint/installed.stamp

.PHONY: install run test lint format bench load clean

$(STAMP): pyproject.toml
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'
	@mkdir -p .flowpoint && touch $(STAMP)

install: $(STAMP)

run: install
	$(PYTHON) -m flowpoint_cli demo --with-sidecar

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider

lint: install
	ruff check .
	ruff format --check .
	mypy

format: install
	ruff format .
	ruff check --fix .

bench: install
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(PYTHON) -m load.bench

load: install
	$(PYTHON) -m load.run_load

clean:
	rm -rf .flowpoint reports build *.egg-info
