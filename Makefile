# make serve   run the service on 127.0.0.1:8080 with the bundled artifacts
# make test    run the whole test suite (what CI runs)
# make check   the quick loop (under a minute): the suite without the slow, gunicorn, browser,
#              postgres, fuzz and nginx tests (markers in pyproject.toml)
# make serve-prod  the same service under gunicorn (several workers; cds_service/gunicorn_conf.py)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: serve serve-prod test check validate bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

serve: $(VENV)/.installed
	$(BIN)/mm-cds serve

serve-prod: $(VENV)/.installed
	$(BIN)/mm-cds serve --prod

test: $(VENV)/.installed
	$(BIN)/python -m pytest

check: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow and not gunicorn and not browser and not postgres and not fuzz and not nginx"

validate: $(VENV)/.installed
	$(BIN)/mm-cds validate

bench: $(VENV)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
