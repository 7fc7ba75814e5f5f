# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
TESTENV := $(VENV)/.installed-test

.PHONY: demo test lint typecheck unit integration bench dashboard system-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(TESTENV): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,deploy]'
	touch $@ $(RUNTIME)

## demo: run the exporter on the built-in Bitrix24 and Pachca simulators (no credentials needed)
demo: $(RUNTIME)
	$(VENV)/bin/tasks-exporter --demo

## system-deps: Debian's prometheus package (promtool and a real Prometheus for the integration tests), and
## docker.io with debootstrap (tests/test_image.py builds and runs the image on a private Docker engine)
system-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (promtool, prometheus)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
# docker.io only as root (the image test runs dockerd as root); without apt the test skips and says why.
	@[ "$$(id -u)" != 0 ] || { PATH="$$PATH:/usr/sbin:/sbin"; \
	  command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1; } || { \
	  echo "installing Debian's docker.io and debootstrap (tests/test_image.py)"; \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null \
	  || echo "warning: could not install docker.io and debootstrap: tests/test_image.py will be skipped"; }

lint: $(TESTENV)
	$(VENV)/bin/ruff check .

typecheck: $(TESTENV)
	$(VENV)/bin/mypy

## test: everything: lint, types, unit, fault and integration tests
test: $(TESTENV) system-deps lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(TESTENV)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py

dashboard: $(TESTENV)
	$(PY) grafana/dashboard.py --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
