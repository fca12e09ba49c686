# Two commands for a new user: `make demo` and `make test`. `make dev` opens the Dagster UI on
# the same instance `make demo` used (DAGSTER_HOME = this folder, state under .state/).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)

.PHONY: install demo test lint dev validate reliability bench bench-cycle clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/compound-learning demo

# One worker per core (pytest-xdist), each test file on one worker: a file's module fixtures are
# built once. Every test has its own databases, queues and ports, so files run side by side.
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The full tier of the fault and hostile-input tests (RELIABILITY.md); CI runs a quick tier of
# the same tests inside `make test`.
reliability: install
	COMPOUND_LEARNING_KILL_TRIALS=20 COMPOUND_LEARNING_HYPOTHESIS_EXAMPLES=1000 \
		$(BIN)/python -m pytest -q -s -m reliability

# Scale figures beside their bare baselines (BENCHMARKS.md holds the last table); minutes, not a test.
BENCH_PG_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
bench: install
	$(BIN)/python -m compound_learning.benchmarks.scale --pg-url $(BENCH_PG_URL) --write BENCHMARKS.md

# The daily cycle at agency scale (100k rows a day after 8 days, on a fresh PostgreSQL database)
# and a day with no data next to a trivial asset; about 6 minutes. BENCHMARKS.md "Daily cycle".
bench-cycle: install
	$(BIN)/python -m compound_learning.benchmarks.cycle_scale --rows 100000 --days 90 --measure 2 --pg-url $(BENCH_PG_URL)
	$(BIN)/python -m compound_learning.benchmarks.empty_day

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

dev: install
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

validate: install
	$(BIN)/dagster definitions validate -w workspace.yaml

clean:
	rm -rf .state
