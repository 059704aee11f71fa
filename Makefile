# make serve   run the service on 127.0.0.1:8080 with the bundled artifacts
# make test    run the whole test suite (what CI runs): make lint, then every test, on every
#              core (pytest-xdist; PYTEST_WORKERS=1 runs it in one process; docs/testing.md),
#              then the quick loop and the tests marked native again on the compiled modules
#              (make native), leaving the checkout as Python (make pure)
# make native  compile the request path's hottest modules with mypyc, as the image does
#              (cds_service/_native.py; needs a C compiler); make pure removes them
# make lint    ruff, mypy and the import-linter contracts (the layers)
# make check   the quick loop (under a minute): the suite without the slow, gunicorn, browser,
#              postgres, fuzz and nginx tests (markers in pyproject.toml), on every core too
# make serve-prod  the same service under gunicorn (several workers; cds_service/gunicorn_conf.py)
# make serve-proxy production: nginx on MM_CDS_PORT (8080) in front of gunicorn on loopback
#                  MM_CDS_INTERNAL_PORT (8081); deploy/nginx/run.py, docs/proxy.md
# make bench   the representative workloads first (make bench-workloads), then the synthetic tables
# make bench-workloads  issue 12's workloads (a)-(c): in process, HTTP, fetch path, memory (bench/README.md)
# make lock    regenerate requirements.lock (exact pins) from pyproject.toml's ranges (docs/packaging.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: serve serve-prod serve-proxy test check lint validate bench bench-workloads lock clean native pure

# The exact pins of requirements.lock, then the project itself (editable, no dependencies of its own).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Every extra, so that one lock serves the service, the tests and the benchmarks. No index
# URL, host or find-links path is written into the file: pip's own configuration decides.
LOCK_EXTRAS := --extra postgres --extra test --extra browser --extra bench
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip-tools
	$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-trusted-host \
		--no-emit-find-links $(LOCK_EXTRAS) -o requirements.lock pyproject.toml

serve: $(VENV)/.installed
	$(BIN)/mm-cds serve

serve-prod: $(VENV)/.installed
	$(BIN)/mm-cds serve --prod

serve-proxy: $(VENV)/.installed
	$(BIN)/python deploy/nginx/run.py

# One worker per core (pytest-xdist); a file's tests stay on one worker, the files in the order
# tests/conftest.py gives them (the slowest first). PYTEST_WORKERS=1: one process, no xdist.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL = $(if $(filter 1,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# Tests that need a real server, a browser or a database: only in make test's first pass.
COMPONENTS := not gunicorn and not browser and not postgres and not nginx
QUICK := -m "not slow and not fuzz and $(COMPONENTS)"
# The compiled pass: the quick loop and the slow and fuzz tests marked native (pyproject.toml).
NATIVE := -m "(native or (not slow and not fuzz)) and $(COMPONENTS)"

# MM_CDS_EXPECT_NATIVE tells tests/test_native.py which build it must find.
test: lint
	$(MAKE) --no-print-directory pure
	MM_CDS_EXPECT_NATIVE=0 $(BIN)/python -m pytest $(PYTEST_PARALLEL)
	$(MAKE) --no-print-directory native
	MM_CDS_EXPECT_NATIVE=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL) $(NATIVE)
	$(MAKE) --no-print-directory pure

lint: $(VENV)/.installed
	$(BIN)/ruff check cds_service tests bench examples deploy setup.py
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

check: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(QUICK)

# The image's build of the same source (setup.py, cds_service/_native.py): extension modules
# beside their sources, which Python then imports instead; start-up refuses them once a
# source changes. pure: back to the source alone.
native: $(VENV)/.installed
	MM_CDS_COMPILE=1 $(BIN)/python setup.py --quiet build_ext --inplace
pure:
	rm -f cds_service/*/*.so cds_service/*.so cds_service/_native_build.json

validate: $(VENV)/.installed
	$(BIN)/mm-cds validate

bench: bench-workloads
	$(BIN)/python bench/run.py

# The production build: compiled (bench/README.md); the header says which build ran.
bench-workloads: native
	$(BIN)/python bench/realistic.py

clean: pure
	rm -rf $(VENV) *.egg-info .pytest_cache build
