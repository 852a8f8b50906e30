# Two commands set everything up on a fresh machine with Python 3.11 and make: `make demo`, `make test`.
PYTHON ?= python3
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
# Installed packages come with their bytecode: every `c360` command, service worker and notebook kernel imports
# MLflow, Feast and LightGBM, ≈ 10 s of CPU compiling them where Python may not write its cache (PYTHONDONTWRITEBYTECODE).
export UV_COMPILE_BYTECODE := 1
UV := $(PYTHON) -m uv
RUN := $(UV) run --frozen

.PHONY: install demo test lint bench bench-events-quick bento clean help mlflow-ui screenshots

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

.venv/.installed: pyproject.toml uv.lock
	@$(UV) --version 2>/dev/null | grep -q "$(UV_VERSION)" || \
		$(PYTHON) -m pip install --quiet --user --break-system-packages --root-user-action=ignore uv==$(UV_VERSION)
	$(UV) sync --frozen --inexact  # inexact: keeps the `spark` extra once `make test` has added it
	@touch $@

# pyspark (≈ 430 MB) is the `spark` extra: the Spark engine's tests need it, `make demo` does not.
.venv/.spark: .venv/.installed
	$(UV) sync --frozen --extra spark
	@touch $@

install: .venv/.installed  ## install c360 and its pinned dependencies into .venv with uv

demo: install  ## run the whole pipeline on generated data and print where to look
	$(RUN) c360 demo

lint: install  ## ruff, mypy and the layer contract (import-linter)
	$(RUN) ruff check .
	$(RUN) mypy c360
	$(RUN) lint-imports

test: lint .venv/.spark  ## lint, then the test suite and every notebook (nbmake), two workers (a file's tests on one); the 30 slowest listed
	@$(RUN) python -m compileall -q -j 0 c360 features feature_repo training serving >/dev/null
	$(RUN) pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=30 --nbmake --nbmake-timeout=900 tests notebooks

mlflow-ui: install  ## the MLflow UI on C360_HOME's tracking store (HOST=127.0.0.1 PORT=5000)
	$(RUN) c360 mlflow-ui --host $(or $(HOST),127.0.0.1) --port $(or $(PORT),5000)

screenshots: install  ## refresh the README's screenshots (docs/images/) from the browser tests
	$(RUN) pytest tests/c360/test_review_cli.py tests/serving/test_ui.py --docs-images

bento: install  ## a Bento of the service (bentoml build, bentofile.yaml): the c360 wheel and uv.lock's packages
	@mkdir -p build
	$(UV) export --frozen --no-dev --no-emit-project --no-hashes --quiet --output-file build/requirements.txt
	$(UV) build --wheel --out-dir dist --quiet
	$(RUN) bentoml build

bench: install  ## benchmarks at 1M customers (about an hour on 2 cores); figures go to bench/RESULTS.md
	$(RUN) python -m bench.generate_ingest
	$(RUN) python -m bench.resolve
	$(RUN) python -m bench.features
	$(RUN) python -m bench.online_store
	@test -d $${C360_HOME:-.c360}/scores || { echo "bench.serve and bench.score need a scored demo home: run make demo first"; exit 1; }
	$(RUN) python -m bench.serve
	$(RUN) python -m bench.events
	$(RUN) python -m bench.score
	$(RUN) python -m bench.models

bench-events-quick: install  ## try the live-events benchmark: a 2,000-customer home of its own, 3 s per batch size, not recorded
	$(RUN) python -m bench.events --build 2000 --quick

clean:  ## remove run state (C360_HOME default) and caches
	rm -rf .c360 .pytest_cache .mypy_cache .ruff_cache build dist
