# nfflowd: the two commands of the README, and the pieces they are made of.
#   make demo   the built-in NAT lab (or, without root/namespaces, the bundled log) -> local collector
#   make test   everything the tests need (apt packages, the venv), then lint, types and the suite

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=
# Debian packages the demo and the tests use: the kernel's conntrack tools, the collector and
# decoders that judge our packets, a real syslog daemon, namespaces and NAT; setfacl (the
# <daemon> user test lets its system user reach the venv's interpreter) and systemd-analyze;
# python3-venv (Debian splits ensurepip out of python3: without it `python3 -m venv` fails).
APT_PACKAGES := conntrack nfdump tshark rsyslog iproute2 iptables nftables procps iputils-ping kmod acl systemd python3-venv
APT_COMMANDS := conntrack nfcapd nfdump tshark rsyslogd ip iptables nft sysctl ping setfacl systemd-analyze

.PHONY: demo test sysdeps venv lint unit bench bundle clean

sysdeps:
	@missing=""; for c in $(APT_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages (missing:$$missing)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root for apt-get; install: $(APT_PACKAGES)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: sysdeps venv
	$(VENV)/bin/nfflowd demo

lint: venv
	$(VENV)/bin/ruff check nfflowd workers tests bench
	$(VENV)/bin/ruff format --check nfflowd workers tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: sysdeps venv lint
	$(PY) -m pytest -ra $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q tests/unit

bench: sysdeps venv
	$(PY) bench/bench_pipeline.py

# The single-file bundle (README "Single-file bundle"): a shiv zipapp of nfflowd and the
# manylinux wheels of every [project] dependency, run by a bare `python3`.  Compiled wheels are
# per Python version: it is built for the venv's X.Y unless BUNDLE_PYTHON names another.
# -E exports the extracted site-packages in PYTHONPATH, so the `python3 -m ...` that start
# supervisord and the stages find nfflowd and its dependencies too.
DIST          ?= dist
BUNDLE_BUILD  ?= build/bundle
BUNDLE_PYTHON ?= $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

bundle: venv
	rm -rf $(BUNDLE_BUILD) && mkdir -p $(BUNDLE_BUILD) $(DIST)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(BUNDLE_BUILD) .
	$(PY) -m shiv -q --compressed --reproducible -E -e nfflowd.ops.bundle:main \
	  -p '/usr/bin/env python$(BUNDLE_PYTHON)' -o $(DIST)/nfflowd.pyz \
	  --only-binary=:all: --python-version $(BUNDLE_PYTHON) $(BUNDLE_BUILD)/nfflowd-*.whl

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
