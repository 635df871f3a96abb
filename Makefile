# llmprep: `make run` installs everything into .venv and trains the default model; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# A package index for torch alone, e.g. https://download.pytorch.org/whl/cpu for the small CPU build.
TORCH_INDEX ?=
ARGS ?=
# The book's code for bench/bench_train.py. Installed without its requirements: they pin
# numpy<2.1 and pull tensorflow and jupyterlab, and the two modules the bench imports need only
# torch, numpy, matplotlib and tqdm, which llmprep already has.
BOOK_PACKAGE ?= llms-from-scratch==1.0.19
BENCH_STAMP := $(VENV)/.bench-installed

.DEFAULT_GOAL := help
.PHONY: help install run test test-slow lint format bench results clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/$$(TORCH_VERSION)/$(TORCH_VERSION)/g' \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv with torch==$(TORCH_VERSION) first, then llmprep and its dev tools

run: $(STAMP) ## Install if needed, then pretrain the default model (pass overrides with ARGS="...")
	$(PY) train.py $(ARGS)

test: $(STAMP) ## Run the test suite (slow tests excluded)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-slow: $(STAMP) ## Run only the slow tests
	$(PY) -m pytest -m slow $(ARGS)

lint: $(STAMP) ## Check style and formatting with ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## Fix style and formatting with ruff
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --no-deps $(BOOK_PACKAGE)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Run the benchmarks (bench/bench_*.py) and print their tables
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The runs whose figures the README quotes, as it types them, each followed by its wall time.
RESULTS := "experiment=spam_from_scratch" "experiment=book_ch05 logger=csv" ""
results: $(STAMP) ## Re-run the runs the README quotes (spam from scratch, chapter 5, the `make run` demo); `make bench` the tables
	@for overrides in $(RESULTS); do \
		echo "== python train.py $$overrides"; start=$$(date +%s); \
		$(PY) train.py $$overrides || exit 1; \
		echo "== python train.py $$overrides: $$(($$(date +%s) - start)) s"; \
	done

clean: ## Remove caches, run outputs and the virtual environment
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs multirun wandb lightning_logs *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
