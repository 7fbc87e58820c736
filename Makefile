# The two commands: `make run` starts everything, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Optional dependency groups: the worker's (TensorFlow) and the developers'. The web image takes none.
EXTRAS ?= worker,dev

.PHONY: run test lint format bench chaos migrations install venv clean settings-table

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e "$(if $(EXTRAS),.[$(EXTRAS)],.)"
	touch $@

venv: $(VENV)/.installed

# Everything comes from pip: htmx's local copy is in the repository (static/vendor/), Swagger UI's in a package.
install: $(VENV)/.installed

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
	rm -rf $(VENV) data

# Faults under load (worker SIGKILL/SIGTERM, Redis and PostgreSQL restarts), then a hostile load (a 10,000-image
# archive, a flood from one user and decode bombs at once): their two sections of docs/reliability.md. About
# 15 to 25 minutes on 2 cores; CHAOS_ARGS="--images 1000" or "--no-hostile" for a shorter run.
chaos: install
	$(PY) bench/chaos.py $(CHAOS_ARGS)
