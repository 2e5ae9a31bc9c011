# The two commands a newcomer needs: `make run` and `make test`.
# Both create (or reuse) .venv and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## Start Redis (embedded unless REDIS_URL is set), the broker on 127.0.0.1:8080 and an RQ worker.
run: venv
	$(BIN)/errand run

## Run the whole test suite (unit, property, integration against a private redis-server, e2e).
test: venv
	bash scripts/test.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	bash scripts/bench.sh

clean:
	rm -rf $(VENV) .errand .pytest_cache
