# The two entry points of the README. Everything a fresh machine needs is installed here.
#   make up     set up, prepare the host (rootless Podman), build local images, `ccoas up` the default stack
#   make test   set up, then the fast tier (needs no prepared host: it may run first, on a host
#               where `make up` never ran) and the end-to-end tier (prepares the host first);
#               pytest exit code 5 fails too. Both print each test module's time at the end.
PYTHON ?= python3
VENV ?= .venv
STACK ?= stacks/dev.yaml
CCOAS := $(VENV)/bin/ccoas
PYTEST := $(VENV)/bin/python -m pytest

.PHONY: setup host up down test test-fast test-e2e test-tools bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

host: setup
	$(CCOAS) host prepare $(STACK)

up: host
	$(CCOAS) up $(STACK)

down: setup
	$(CCOAS) down $(STACK)

# Two workers (pytest-xdist): the fast tier is CPU-bound and the machines have two cores; each
# module whole on one worker (its module fixtures, a Vault server or one Checkov run, made once).
FAST_WORKERS ?= 2

test-fast: setup
	$(PYTEST) -m "not e2e" -q -n $(FAST_WORKERS) --dist loadfile

# The e2e tier mostly waits (about 40% of two cores): E2E_WORKERS=2 runs it on two xdist
# workers, each module whole on one worker and modules that share a fixture or host
# preparation's apt/useradd one after another (tests/e2e/conftest.py). The images are built
# first, once, so that two workers never build the same one at the same time.
E2E_WORKERS ?= 0

# What only the tests use, from Debian: the browser the GraphiQL and first-login tests drive
# (headless, through Nginx). Installed here because a new machine has none of it.
TEST_PACKAGES := chromium chromium-driver

test-tools:
	@missing=""; for p in $(TEST_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing what the tests use:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test-e2e: host test-tools
	$(CCOAS) images build $(STACK)
	$(PYTEST) -m e2e -q $(if $(filter-out 0,$(E2E_WORKERS)),-n $(E2E_WORKERS) --dist loadgroup)

test: test-fast test-e2e

bench: host
	$(VENV)/bin/python tests/benchmarks/bench_up.py $(STACK)
