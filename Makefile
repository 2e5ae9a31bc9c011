# The two commands a newcomer needs: `make run` and `make test`.
# Both create (or reuse) .venv and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-fast lint typecheck bench venv clean

venv: $(VENV)/.installed

# Exact versions from constraints.txt (what the images ship); pyproject.toml keeps ranges.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

## Re-pin constraints.txt to what .venv has (after upgrading a dependency there and testing).
.PHONY: constraints
constraints: venv
	{ sed -n '/^#/!q;p' constraints.txt; \
	  $(BIN)/pip freeze --exclude-editable --disable-pip-version-check; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

## Start Redis (embedded unless REDIS_URL is set), the broker on 127.0.0.1:8080 and an RQ worker.
run: venv
	$(BIN)/errand run

## Run the whole test suite (unit, property, integration against a private redis-server, e2e).
test: venv
	bash scripts/test.sh

## The fast loop while editing: unit and property tests not marked slow (no processes, no
## real Redis), under 30 s. `make test` stays the full suite and what CI runs.
## Two pytest processes, one per core: FAST_FIRST's folders in the background (their report
## is printed at the end), everything else in the foreground.
FAST_PYTEST := $(BIN)/python -m pytest -m "not slow" -q -p no:schemathesis -p no:cacheprovider
FAST_FIRST  := tests/unit/http tests/unit/identity tests/unit/callers tests/property
test-fast: venv
	@mkdir -p .errand
	@$(FAST_PYTEST) $(FAST_FIRST) > .errand/test-fast.log 2>&1 & first=$$!; \
	$(FAST_PYTEST) tests/unit $(addprefix --ignore=,$(FAST_FIRST)); rest=$$?; \
	wait $$first; first=$$?; \
	echo "--- $(FAST_FIRST)"; cat .errand/test-fast.log; \
	[ $$first -eq 0 ] && [ $$rest -eq 0 ]

## Lint and formatting (ruff), then the type checks.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## mypy over the product code (strict on domain/, identity/, policy/ and tokens/: see pyproject).
typecheck: venv
	$(BIN)/mypy broker workers errand_jose errand_rs errand_client

bench: venv
	bash scripts/bench.sh

clean:
	rm -rf $(VENV) .errand .pytest_cache
