# Quick start: `make demo` (set up + compile AttendNeXt for this host and rpi4, run it)
#              `make test` (set up + lint + the whole test suite, as CI runs it)
VENV := .venv
CLI := $(VENV)/bin/tvmc-attend
OUT := out

.PHONY: setup demo test test-fast bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(CLI) models
	$(CLI) targets
	$(CLI) compile --model attendnext --target host -o $(OUT)/attendnext-host
	$(CLI) run $(OUT)/attendnext-host --repeat 20
	$(CLI) compile --model attendnext --target rpi4 -o $(OUT)/attendnext-rpi4

lint: setup
	$(VENV)/bin/ruff check .

# Test files run in parallel, one per core (at most 4: each worker holds TVM and PyTorch);
# a file's tests stay on one worker, sharing its fixtures.
PYTEST_PARALLEL := -n auto --maxprocesses 4 --dist loadfile

test: lint
	$(VENV)/bin/python -m pytest -q -m "not bench" $(PYTEST_PARALLEL) --durations=25

bench: setup
	$(VENV)/bin/python -m pytest -q -m bench

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not emulated and not bench" $(PYTEST_PARALLEL)

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
