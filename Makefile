# Two commands do everything on a fresh machine:
#   make test   create .venv if missing, install the pinned dependencies, run the test suite
#   make book   same set-up, run the notebooks (papermill) and build the Jupyter Book
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The exact versions installed (pip constraints); pyproject.toml states the ranges the library accepts.
LOCK   := requirements/lock.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)

# Data and caches stay inside the checkout unless the caller points elsewhere.
export FEDGRAD_DATA_ROOT ?= $(CURDIR)/data
export FEDGRAD_CACHE ?= $(CURDIR)/cache
# quick: the real tasks, reduced for a 2-core CPU (its measured cost: benchmarks/RESULTS.md);
# CI builds smoke (.ci/run)
PROFILE ?= quick

.PHONY: install test test-fast oldest book bench clean mutants lint

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test,book,flower]'
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The oldest versions pyproject.toml allows of numpy, scikit-learn, scipy, pandas and tqdm
# (requirements/oldest.txt; torch and pytest from the lock), in their own venv, with the fast tests
# (PyYAML for tests/test_citation.py, which reads CITATION.cff).
OLDEST := $(VENV)-oldest
oldest:
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	grep -vE '^(numpy|scikit-learn|scipy|pandas|tqdm)==' $(LOCK) > $(OLDEST)/lock-rest.txt
	$(OLDEST)/bin/python -m pip install --quiet --only-binary=numpy,scikit-learn,scipy,pandas -c requirements/oldest.txt \
		-c $(OLDEST)/lock-rest.txt -e '.[test]' numpy scikit-learn scipy pandas tqdm pyyaml
	$(OLDEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(numpy|scikit-learn|scipy|pandas|tqdm|torch) '
	$(OLDEST)/bin/python -m pytest -m "not slow" -q -p no:cacheprovider

book: $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name fedgrad --display-name "fedgrad (.venv)" > /dev/null
	$(BIN)/python book/run_notebooks.py --profile $(PROFILE)
	$(BIN)/python book/execution_table.py
	$(BIN)/python book/record.py stage
	$(BIN)/python book/headline.py
	$(BIN)/jupyter-book build -W --keep-going book

# The committed record of the executed notebooks (book/record/), and the site built from it.
#   make record   after make book: copies book/experiments/ into $(RECORD) with a manifest (profile,
#                 seeds, commit, hardware, date, source hash per notebook); refuses stale notebooks
#   make site     the book from $(RECORD): no data, no runs, a few minutes (what Pages publishes)
RECORD ?= book/record
.PHONY: record site
record: $(STAMP)
	$(BIN)/python book/record.py save --to $(RECORD)

site: $(STAMP)
	$(BIN)/python book/record.py restore --from $(RECORD)
	$(BIN)/python book/headline.py
	rm -rf book/_build
	$(BIN)/jupyter-book build -W --keep-going book

# Mutation testing of fedgrad_core/defenses/ with the fast unit tests ([tool.mutmut] in pyproject.toml).
# MUTANTS narrows the run to mutant names, e.g. MUTANTS='fedgrad_core.defenses.rfa*'; results
# are cached in mutants/ (rerun to continue), `$(BIN)/mutmut browse` shows the survivors.
MUTANTS ?=
MUTANT_JOBS ?= 2
mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/mutmut run --max-children $(MUTANT_JOBS) $(MUTANTS)
	$(BIN)/mutmut results
	@echo "mutants by status (killed / survived / no tests / timeout ...):"
	@$(BIN)/mutmut results --all true | awk -F': ' '{print $$NF}' | sort | uniq -c

# Static checks ([tool.ruff] and [tool.mypy] in pyproject.toml; ruff and mypy pinned in the dev extra).
LINT_PATHS ?= fedgrad_core tests examples benchmarks data_scripts book tools
lint: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check fedgrad_core
	$(BIN)/mypy

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf book/_build notebooks/executed
