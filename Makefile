# The two commands: `make run` starts everything, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Optional dependency groups: the worker's (TensorFlow) and the developers'. The web image takes none.
EXTRAS ?= worker,dev
HTMX_VERSION := 2.0.4
HTMX_LOCAL := static/vendor/htmx.min.js

.PHONY: run test lint format bench chaos migrations install venv clean settings-table

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e "$(if $(EXTRAS),.[$(EXTRAS)],.)"
	touch $@

venv: $(VENV)/.installed

install: $(VENV)/.installed $(HTMX_LOCAL)

# A local copy of htmx from the npm registry, for air-gapped installs (HTMX_URL) and the tests.
$(HTMX_LOCAL):
	mkdir -p static/vendor
	cd static/vendor && npm pack --silent htmx.org@$(HTMX_VERSION) >/dev/null \
		&& tar -xzf htmx.org-$(HTMX_VERSION).tgz package/dist/htmx.min.js \
		&& mv package/dist/htmx.min.js htmx.min.js && rm -rf package htmx.org-$(HTMX_VERSION).tgz

run: install
	$(PY) -m app.run

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app tests bench locustfile.py

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The README's settings table, generated from app/settings.py after a change to a setting.
settings-table: venv
	$(PY) -m app.settings --write-readme

# New migration files after a change to app/models.py.
migrations: install
	$(VENV)/bin/tortoise makemigrations

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) data static/vendor

# Faults under load (worker SIGKILL/SIGTERM, Redis and PostgreSQL restarts): docs/reliability.md.
chaos: install
	$(PY) bench/chaos.py
