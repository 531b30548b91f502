# The two commands of the quick start:
#   make demo   set up, then run the main job on the built-in appliance
#   make test   set up, then run the whole test suite, ruff, mypy and import contracts
.PHONY: demo test setup lint bench clean

VENV := .venv/bin

setup:
	@scripts/setup.sh

demo: setup
	@$(VENV)/python examples/demo.py

lint: setup
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports

test: setup
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports
	$(VENV)/pytest -x -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/python bench/passthrough.py --quick

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
