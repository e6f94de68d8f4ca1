# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kt gateway run --policy-config policies/examples/default/policy-config.yaml

test: $(STAMP)
	bash .ci/install-tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/events_soak.py --events 100000 --reports 2

# The long HTTP fuzz campaign against a real gateway (docs/testing.md): FUZZ_REQUESTS=N (default 100000), FUZZ_SEED=S.
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
