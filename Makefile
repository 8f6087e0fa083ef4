# make test: lint, the whole suite on Airflow 3.3.2, and the unit tests on the declared floor.
# make demo: the example scraping DAG end to end against the local emulator (or the real API
#            when BROWSER_USE_API_KEY is set). Both set up their own virtual environments.
# make bench: what the provider costs, beside its baselines (benchmarks/run.py).
# make mutate: break each promise of the README in turn; a test must notice (scripts/mutate.py).
# make test-deploy: the provider under the CeleryExecutor (PostgreSQL, Redis, two workers, a
#            triggerer) with faults, and the Airflow UI in headless Chromium (deploy/).

PYTHON ?= python3
VENV ?= .venv
FLOOR_VENV ?= .venv-floor
DEPLOY_VENV ?= .venv-deploy
AIRFLOW_VERSION ?= 3.3.2
# The declared floor (pyproject: apache-airflow>=3.1.0). Its release predates some of today's
# packages; these pins are what it was released with where newer ones break it.
AIRFLOW_FLOOR ?= 3.1.0
FLOOR_PINS ?= "structlog==25.4.0" "universal-pathlib==0.2.6"

BIN := $(VENV)/bin
FLOOR_BIN := $(FLOOR_VENV)/bin
DEPLOY_BIN := $(DEPLOY_VENV)/bin

.PHONY: test lint pytest test-floor test-deploy demo bench mutate clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --python $(BIN)/python "apache-airflow==$(AIRFLOW_VERSION)" -e ".[test]"
	touch $@

$(FLOOR_BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_BIN)/python -m pip install -q --upgrade pip uv
	$(FLOOR_BIN)/uv pip install -q --python $(FLOOR_BIN)/python "apache-airflow==$(AIRFLOW_FLOOR)" $(FLOOR_PINS) -e ".[test]"
	touch $@

# The Celery provider and its clients, Playwright (it drives Debian's Chromium; it downloads no browser).
# celery 5.7 removed a module the Celery provider imports at worker start.
$(DEPLOY_BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_BIN)/python -m pip install -q --upgrade pip uv
	$(DEPLOY_BIN)/uv pip install -q --python $(DEPLOY_BIN)/python "apache-airflow==$(AIRFLOW_VERSION)" \
		apache-airflow-providers-celery "celery[redis]<5.7" psycopg2-binary asyncpg playwright -e ".[test]"
	touch $@

test: lint pytest test-floor

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy airflow_provider_browseruse

pytest: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# DAG-level runs need the floor's own pinned dependency set (its constraints file); unit tests do not.
test-floor: $(FLOOR_BIN)/.installed
	$(FLOOR_BIN)/python -m pytest -q -m "not dag and not scheduler and not packaging"

# Files in the order they run: the secrets check reads what every scenario before it left.
test-deploy: $(DEPLOY_BIN)/.installed
	bash scripts/deploy-prerequisites.sh
	$(DEPLOY_BIN)/python -m pytest -q -p no:cacheprovider -o testpaths=deploy \
		deploy/test_distributed.py deploy/test_ui.py deploy/test_secrets.py

demo: $(BIN)/.installed
	$(BIN)/python scripts/demo.py

# One promise of the README broken at a time; fails if a test does not notice (scripts/mutate.py).
mutate: $(BIN)/.installed
	$(BIN)/python scripts/mutate.py

# Benchmarks print a table and write bench-results.json; they assert nothing about time.
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(DEPLOY_VENV) .demo .deploy
