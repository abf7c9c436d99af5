# PyFilter: `make up` runs the stack on this host, `make test` the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
COMPOSE_FILES := -f compose/docker-compose.yml
# Air-gapped when asked (AIRGAPPED=1), or when no base image can be had from
# a registry. Decided once per make run.
ifndef AIRGAPPED
AIRGAPPED := $(shell docker image inspect python:3.12-slim >/dev/null 2>&1 \
	|| timeout 60 docker pull -q python:3.12-slim >/dev/null 2>&1 || echo 1)
endif
ifeq ($(AIRGAPPED),1)
COMPOSE_FILES += -f compose/airgapped.yml
endif
COMPOSE := docker compose $(COMPOSE_FILES)
# The air-gapped base image, as compose/airgapped.yml names it.
BASE_IMAGE = $(shell sed -n 's/^ *image: *\(pyfilter-base:[^ ]*\)/\1/p' compose/airgapped.yml | head -n 1)

.PHONY: help up down server server-cluster agent host-credentials remove-host images airgapped-images dev lint test unit integration bench bench-idle logs fail2ban-config

help:
	@echo "make up      start the stack on this host (healthy when it returns); DETECTORS=3 scales"
	@echo "make down    stop it (volumes, hence bans and history, are kept)"
	@echo "make server  many hosts: Redis (TLS), detectors, api (notifier if a channel is set); secrets in compose/server.env;"
	@echo "             HA=1: Redis with replicas and Sentinel (compose/server-ha.yml)"
	@echo "             CLUSTER=1 (or make server-cluster): Redis Cluster of three primaries (compose/server-cluster.yml)"
	@echo "make host-credentials HOST=web1  on the server: web1's Redis user, into compose/hosts/ (HA=1, CLUSTER=1: on every node)"
	@echo "make remove-host HOST=web1       on the server: revoke web1 (the other hosts keep running; HA=1, CLUSTER=1: on every node)"
	@echo "make agent HOST=web1             on web1: collector and enforcer (compose/hosts/web1.env)"
	@echo "make test    the whole suite: unit tests and the real stack in containers"
	@echo "make dev     .venv with the project and its test tools (CLI: .venv/bin/pyfilter)"
	@echo "make lint    ruff and the import contracts (also run by make test)"
	@echo "make bench   benchmarks, side by side with fail2ban"
	@echo "make bench-idle  CPU and memory of the idle stack (docs/benchmarks.md)"

compose/.env:
	@umask 077; { \
	  echo "PYFILTER_API_TOKEN=$$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"; \
	  echo "PYFILTER_REDIS_PASSWORD=$$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"; \
	} > $@
	@echo "generated an API token and a Redis password in $@"

airgapped-images:
	docker/build-base.sh
	docker/build-wheels.sh

images: $(if $(filter 1,$(AIRGAPPED)),airgapped-images)
	$(COMPOSE) build

DETECTORS ?= 1

# compose/.env also tells a plain `docker compose` run in compose/ which
# files to use, so `docker compose up --scale detector=3` works there too.
# The journal's group, found on this host, lets the collector read the journal.
JOURNAL_GID = $(shell compose/journal-gid.sh "$${PYFILTER_LOG_DIR:-/var/log}")

# The notifier runs only when the configuration names a channel (compose/profiles.sh).
up: compose/.env images
	@sed -i '/^COMPOSE_FILE=/d; /^PYFILTER_JOURNAL_GID=/d; /^COMPOSE_PROFILES=/d' compose/.env
	@$(if $(filter 1,$(AIRGAPPED)),echo "COMPOSE_FILE=docker-compose.yml:airgapped.yml" >> compose/.env)
	@$(if $(JOURNAL_GID),echo "PYFILTER_JOURNAL_GID=$(JOURNAL_GID)" >> compose/.env)
	@profiles=$$(compose/profiles.sh) && echo "COMPOSE_PROFILES=$$profiles" >> compose/.env
	$(COMPOSE) up -d --wait --scale detector=$(DETECTORS)
	@echo "PyFilter is up: API on http://127.0.0.1:$${PYFILTER_API_PORT:-8470} (token in compose/.env)"

down:
	$(COMPOSE) down

# Many hosts: the server profile in one place, the agent profile on every host
# (docs/security.md). The server's secrets (Redis's admin password, the
# services' users' passwords, the api token) are generated once into
# compose/server.env; its TLS files (a CA and a certificate for
# PYFILTER_SERVER_NAMES, default this machine's names and addresses) into
# compose/tls/, unless the operator put their own there. PYFILTER_REDIS_TLS=0:
# plain TCP, on a network you trust.
# HA=1: Redis with two replicas and three sentinels (compose/server-ha.yml);
# air-gapped, its new nodes run the local base image, as `redis` does. As
# least-privileged as one Redis: the same users on every node and sentinel,
# TLS on all of them (the certificate also names the nodes and sentinels as
# the services reach them); agents go through the sentinels (docs/security.md).
# CLUSTER=1 (or `make server-cluster`): Redis Cluster, three primaries
# (compose/server-cluster.yml), likewise: the same users on every node, TLS on
# every node and on the cluster bus; agents get PYFILTER_REDIS_CLUSTER=1.
PYFILTER_REDIS_TLS ?= 1
PYFILTER_SERVER_NAMES ?= $(shell hostname -f 2>/dev/null; hostname; hostname -I 2>/dev/null)
HA_NAMES = $(if $(filter 1,$(HA)),redis redis-2 redis-3 sentinel-1 sentinel-2 sentinel-3)$(if $(filter 1,$(CLUSTER)), redis redis-2 redis-3)
# Both layers name the same three nodes differently: one or the other.
$(if $(and $(filter 1,$(HA)),$(filter 1,$(CLUSTER))),$(error HA=1 and CLUSTER=1: choose one (Sentinel or Cluster)))
# Many nodes (HA=1 or CLUSTER=1): their layer's compose file; the CA mounted even without TLS.
MANY_NODES = $(filter 1,$(HA) $(CLUSTER))
REDIS_SCHEME = $(if $(filter 0,$(PYFILTER_REDIS_TLS)),redis,rediss)
SERVER_COMPOSE = PYFILTER_REDIS_TLS=$(PYFILTER_REDIS_TLS) PYFILTER_REDIS_SCHEME=$(REDIS_SCHEME) \
	PYFILTER_REDIS_INNER_PORT=$(if $(filter 0,$(PYFILTER_REDIS_TLS)),6379,6380) \
	$(if $(filter 1,$(AIRGAPPED)),$(if $(MANY_NODES),PYFILTER_REDIS_IMAGE=$(BASE_IMAGE))) \
	COMPOSE_PROFILES=$$(compose/profiles.sh) \
	docker compose --env-file compose/server.env -f compose/server.yml $(if $(filter 1,$(HA)),-f compose/server-ha.yml) \
	  $(if $(filter 1,$(CLUSTER)),-f compose/server-cluster.yml) \
	  $(if $(filter 1,$(AIRGAPPED)),-f compose/airgapped.yml)

# Made once; a secret a newer version needs (the Sentinel users') is added to an older file.
SERVER_SECRETS = PYFILTER_REDIS_PASSWORD PYFILTER_DETECTOR_REDIS_PASSWORD PYFILTER_API_REDIS_PASSWORD \
	PYFILTER_NOTIFIER_REDIS_PASSWORD PYFILTER_API_TOKEN PYFILTER_REPLICA_REDIS_PASSWORD PYFILTER_SENTINEL_REDIS_PASSWORD \
	PYFILTER_SENTINEL_PEER_REDIS_PASSWORD
.PHONY: compose/server.env
compose/server.env:
	@umask 077; touch $@; for name in $(SERVER_SECRETS); do grep -q "^$$name=" $@ || { \
	  echo "$$name=$$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" >> $@; echo "generated $$name in $@"; }; done

server: images compose/server.env
	@# HA=1 and CLUSTER=1 mount the CA into the services even without TLS: it must exist.
	$(if $(and $(filter 0,$(PYFILTER_REDIS_TLS)),$(if $(MANY_NODES),,one-node)),,compose/tls.sh compose/tls $(sort $(PYFILTER_SERVER_NAMES) $(HA_NAMES)))
	$(SERVER_COMPOSE) up -d --wait --scale detector=$(DETECTORS)

server-cluster:
	$(MAKE) server CLUSTER=1

# PYFILTER_PUBLIC_REDIS_URL: how agents reach this Redis (default rediss://THIS-HOST:6379/0;
# HA=1: rediss+sentinel://THIS-HOST:26379,THIS-HOST:26380,THIS-HOST:26381/pyfilter/0).
SERVER_HOST = $(shell hostname -f 2>/dev/null || hostname)
PYFILTER_PUBLIC_REDIS_URL ?= $(if $(filter 1,$(HA)),$(REDIS_SCHEME)+sentinel://$(SERVER_HOST):26379$(,)$(SERVER_HOST):26380$(,)$(SERVER_HOST):26381/pyfilter/0,$(REDIS_SCHEME)://$(SERVER_HOST):$${PYFILTER_REDIS_PORT:-6379}/0)
, := ,
host-credentials: compose/server.env
	@test -n "$(HOST)" || { echo "usage: make host-credentials HOST=web1" >&2; exit 2; }
	@mkdir -p compose/hosts && chmod 0700 compose/hosts
	@umask 077; $(SERVER_COMPOSE) --profile admin run --rm -T admin \
	  pyfilter server add-host '$(HOST)' --url '$(PYFILTER_PUBLIC_REDIS_URL)' > compose/hosts/$(HOST).env.new \
	  && mv compose/hosts/$(HOST).env.new compose/hosts/$(HOST).env
	@$(if $(filter 0,$(PYFILTER_REDIS_TLS)),echo "PYFILTER_REDIS_REQUIRE_TLS=0" >> compose/hosts/$(HOST).env, \
	  cp compose/tls/ca.crt compose/hosts/$(HOST)-ca.crt && echo "PYFILTER_REDIS_CA=./hosts/$(HOST)-ca.crt" >> compose/hosts/$(HOST).env)
	@$(if $(filter 1,$(HA)),echo "PYFILTER_REDIS_WAIT_REPLICAS=1" >> compose/hosts/$(HOST).env)
	@echo "compose/hosts/$(HOST).env$(if $(filter 0,$(PYFILTER_REDIS_TLS)),, and compose/hosts/$(HOST)-ca.crt): copy to $(HOST)'s compose/hosts/, then there: make agent HOST=$(HOST)"

remove-host: compose/server.env
	@test -n "$(HOST)" || { echo "usage: make remove-host HOST=web1" >&2; exit 2; }
	$(SERVER_COMPOSE) --profile admin run --rm -T admin pyfilter server remove-host '$(HOST)'
	rm -f compose/hosts/$(HOST).env compose/hosts/$(HOST)-ca.crt

# HOST=web1: with compose/hosts/web1.env from the server's make host-credentials
# (or PYFILTER_REDIS_URL and PYFILTER_REDIS_CA in the environment).
agent: images
	PYFILTER_JOURNAL_GID=$(JOURNAL_GID) docker compose $(if $(HOST),--env-file compose/hosts/$(HOST).env) \
	  -f compose/agent.yml up -d --wait

logs:
	$(COMPOSE) logs -f --tail=50

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $@

dev: $(VENV)/.installed

# Debian's fail2ban package, extracted but not installed (its service would
# touch this machine's firewall): the import tests read its /etc/fail2ban
# (tests/unit/test_import_fail2ban.py, $$PYFILTER_FAIL2BAN_CONFIG). Its
# filters are GPL: read at test time, never copied into the repository.
FAIL2BAN_CONFIG := .cache/fail2ban/etc/fail2ban
fail2ban-config: $(FAIL2BAN_CONFIG)/jail.conf

$(FAIL2BAN_CONFIG)/jail.conf:
	@if ! command -v apt-get >/dev/null; then \
	  echo "no apt-get: the fail2ban import tests will be skipped"; exit 0; fi; \
	rm -rf .cache/fail2ban .cache/fail2ban-deb && mkdir -p .cache/fail2ban-deb && \
	(cd .cache/fail2ban-deb && apt-get download -q fail2ban 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }) && \
	dpkg-deb -x .cache/fail2ban-deb/fail2ban_*.deb .cache/fail2ban && \
	echo "extracted $$(basename .cache/fail2ban-deb/fail2ban_*.deb) into .cache/fail2ban"

unit: dev fail2ban-config
	$(VENV)/bin/pytest tests/unit -q

integration: dev images
	PYFILTER_AIRGAPPED=$(AIRGAPPED) $(VENV)/bin/pytest tests/integration -q -p no:cacheprovider

# The linter's rules and the import contracts (no service imports another):
# pyproject.toml, [tool.ruff] and [tool.importlinter].
lint: dev
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collects nothing: that is a failure here, not a pass.
test: lint dev images fail2ban-config
	PYFILTER_AIRGAPPED=$(AIRGAPPED) $(VENV)/bin/pytest tests -q -rs

# Side by side with fail2ban (docs/benchmarks.md), every rule over hostile 16 KB
# lines (docs/hostile-lines.md), then the kernel side in a throwaway network
# namespace (docs/enforcer-bench.md), the collector, the latency from a log
# line to the kernel (docs/latency.md), the api's reads at a million bans
# (docs/benchmarks.md, "Reads at a million bans"), and what the idle stack costs
# (docs/benchmarks.md, "Idle cost").
bench: dev images
	$(VENV)/bin/python -m bench.run
	$(VENV)/bin/python -m bench.hostile_lines --write docs/hostile-lines.md
	$(VENV)/bin/python bench/enforcer_bans.py --write docs/enforcer-bench.md
	$(VENV)/bin/python bench/collector_throughput.py
	$(VENV)/bin/python bench/latency.py --runs 50 --write docs/latency.md
	$(VENV)/bin/python -m bench.api_reads --write docs/benchmarks.md
	$(MAKE) bench-idle

# The default stack brought up on its own, sent nothing, measured for a minute
# from its containers' cgroups (about 2.5 minutes in all).
bench-idle: dev images
	PYFILTER_AIRGAPPED=$(AIRGAPPED) $(VENV)/bin/python bench/idle.py --write docs/benchmarks.md
