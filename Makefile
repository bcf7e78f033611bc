# The two commands of the README. Both create the environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.jaxcompare-installed
DEMO_STAMP := $(VENV)/.jaxcompare-demo-installed
# pytest workers: 2 by default (the CI machine has 2 cores)
WORKERS ?= 2

.PHONY: demo test lint format docs env clean bench bench-anchor

env: $(STAMP)

# the demo needs the package with its [demo] extra only; tests, lint and docs need [dev]
$(DEMO_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[demo]"
	@touch $(DEMO_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/jaxcompare demo --out report

# ruff: the rule set and its reasons are in pyproject.toml [tool.ruff]
lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

format: $(STAMP)
	$(BIN)/python -m ruff format .
	$(BIN)/python -m ruff check --fix .

# API reference from the docstrings (offline) → docs/api/_build/html/index.html
docs: $(STAMP)
	$(BIN)/python -m sphinx -q -W --keep-going -b html docs/api docs/api/_build/html

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ntk.py
	$(BIN)/python benchmarks/bench_trimming.py
	$(BIN)/python benchmarks/bench_lwr.py
	$(BIN)/python benchmarks/bench_surrogate.py
	$(BIN)/python benchmarks/bench_embed.py

# builds benchmarks/.nt-env (jax 0.4.25, numpy<2, neural-tangents 0.6.5) on first use, then times it against us
bench-anchor: $(STAMP)
	$(BIN)/python benchmarks/bench_ntk_anchor.py

clean:
	rm -rf $(VENV) report .pytest_cache docs/api/_build
