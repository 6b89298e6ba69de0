# gpuhub: `make up` starts the hub, `make test` runs every test. Both do their own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

COMPOSE_CMD := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi)
# The deployment's settings; `make up ENV_FILE=...` runs one from another file (harness/compose.py).
# Set only from make's command line: a shell's ENV_FILE, meant for something else, must not pick it.
ENV_FILE := .env
# On GPU hosts the hub needs NVML (docker-compose.gpu.yml); elsewhere it must not ask for it.
COMPOSE := GPUHUB_ENV_FILE=$(abspath $(ENV_FILE)) $(COMPOSE_CMD) --env-file $(abspath $(ENV_FILE)) -f docker-compose.yml \
  $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "-f docker-compose.gpu.yml") --profile postgres
PYTHON ?= python3
VENV := .venv
TOOLS := .tools
CHP_VERSION := 4.6.3

NOTEBOOK_UPSTREAM ?= pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
HUB_UPSTREAM ?= python:3.11.14-slim-bookworm
NOTEBOOK_IMAGE ?= gpuhub/notebook:latest
# `make up BUILD_NOTEBOOK=no` runs the notebook image named in the settings file as it is
# (pulled from a registry, built elsewhere, or the tests' gpuhub/notebook:cpu).
BUILD_NOTEBOOK ?= yes
# The settings file's GPUHUB_HUB_IMAGE, so `make upgrade` rebuilds the image compose runs.
HUB_IMAGE ?= $(call env_setting,GPUHUB_HUB_IMAGE,gpuhub/hub:latest)
TEST_NOTEBOOK_IMAGE ?= gpuhub/notebook:cpu
TORCH_SPEC ?= torch==2.13.0
# Where a CPU torch wheel may lie for offline builds (pip --find-links style folder).
TORCH_WHEELHOUSE ?= $(firstword $(PIP_FIND_LINKS) /opt/wheels)
# Extra CA bundle trusted by apt/pip/npm inside image builds (TLS-intercepting proxies).
EXTRA_CA_CERT ?= $(firstword $(PIP_CERT) $(SSL_CERT_FILE))
PYTEST_ARGS ?=
# A setting from the settings file, else its default (make runs before the hub reads the file).
env_setting = $(or $(shell sed -n 's/^$(1)=//p' $(ENV_FILE) 2>/dev/null | tail -1),$(2))
# The user network (no traffic between user containers), named by the GPUHUB_NETWORK setting;
# its Linux bridge takes the name too, cut to the kernel's 15 characters.
USER_NETWORK = $(call env_setting,GPUHUB_NETWORK,gpuhub-users)
USER_BRIDGE = $(shell printf %.15s "$(USER_NETWORK)")
USER_SUBNET ?= 10.213.0.0/16
USER_IP_RANGE ?= 10.213.128.0/17
HUB_IP ?= 10.213.0.2
# The hub database (GPUHUB_DATABASE): with `postgres`, up/boot/restart start its server first.
DATABASE = $(call env_setting,GPUHUB_DATABASE,sqlite)
POSTGRES_IMAGE = $(call env_setting,GPUHUB_POSTGRES_IMAGE,gpuhub/postgres:15)
POSTGRES_UPSTREAM ?= debian:bookworm-slim
# Where `make backup` writes and `make restore BACKUP=...` reads.
BACKUP_DIR ?= backups

.PHONY: swarm-up swarm-down test-swarm boot boot-install postgres-image database-image backup restore upgrade
.PHONY: help up down restart logs images notebook-image hub-image test-images test unit lint bench dev-deps \
  build-context clean-build lock readme

help:
	@echo "make up     - build images, create .env, start gpuhub and print its URL and login"
	@echo "make down   - stop gpuhub (user homes and hub data are kept)"
	@echo "make restart - restart the hub only; user servers keep running"
	@echo "make boot-install - start gpuhub at every boot (systemd unit; docs/admin.md, Operations)"
	@echo "make upgrade - rebuild the images, back up the hub database, migrate it, restart the hub; servers keep running"
	@echo "make backup  - a dated archive of the hub database, homes and course volumes in $(BACKUP_DIR)/ (servers keep running)"
	@echo "make restore BACKUP=file - bring an archive back (hub stopped; on a fresh host too)"
	@echo "make swarm-up   - on a Swarm manager: deploy gpuhub across the swarm's GPU nodes (docs/admin.md)"
	@echo "make swarm-down - remove the gpuhub stack (user homes and hub data are kept)"
	@echo "make test   - install test dependencies, build test images, run every test"
	@echo "make unit   - only the tests that need neither Docker nor a hub"
	@echo "make bench  - run benchmarks/ (allocator, queue hand-off, spawn storm, hub recovery, class day, telemetry overhead, console pages, Swarm storm, a class of 60 at once)"

# --- build inputs shared by the images ---------------------------------------------------
build-context:
	@mkdir -p .build/wheelhouse
	@if [ -n "$(EXTRA_CA_CERT)" ] && [ -s "$(EXTRA_CA_CERT)" ]; then cp "$(EXTRA_CA_CERT)" .build/extra-ca.pem; else : > .build/extra-ca.pem; fi
	@w=$$(ls $(TORCH_WHEELHOUSE)/torch-*cp311*linux*x86_64.whl 2>/dev/null | head -1); \
	  if [ -n "$$w" ] && [ ! -e ".build/wheelhouse/$$(basename $$w)" ]; then cp "$$w" .build/wheelhouse/; fi

# --- production images ---------------------------------------------------------------------
images: notebook-image hub-image

notebook-image: build-context
	@set -e; \
	nb_base=$$(images/offline-base/resolve-base.sh $(NOTEBOOK_UPSTREAM)); \
	if [ "$$nb_base" = "$(NOTEBOOK_UPSTREAM)" ]; then torch=base; \
	elif ls .build/wheelhouse/torch-*.whl >/dev/null 2>&1; then torch=wheelhouse; \
	  echo "gpuhub: notebook image gets torch from the local wheelhouse ($$(ls .build/wheelhouse/torch-*.whl | xargs -n1 basename))"; \
	else torch=pip; echo "gpuhub: notebook image gets torch ($(TORCH_SPEC)) from the package index"; fi; \
	echo "gpuhub: building $(NOTEBOOK_IMAGE) FROM $$nb_base"; \
	scripts/build-image.sh $(NOTEBOOK_IMAGE) -f images/notebook/Dockerfile \
	  --build-arg BASE_IMAGE=$$nb_base --build-arg TORCH=$$torch --build-arg TORCH_SPEC="$(TORCH_SPEC)"

hub-image: build-context
	@set -e; \
	case "$(HUB_IMAGE)" in gpuhub/*) ;; *) echo "gpuhub: using $(HUB_IMAGE) as it is (GPUHUB_HUB_IMAGE)"; exit 0;; esac; \
	hub_base=$$(images/offline-base/resolve-base.sh $(HUB_UPSTREAM)); \
	echo "gpuhub: building $(HUB_IMAGE) FROM $$hub_base"; \
	scripts/build-image.sh $(HUB_IMAGE) -f images/hub/Dockerfile --build-arg BASE_IMAGE=$$hub_base

# PostgreSQL from Debian's packages, on debian:bookworm-slim or, without a registry, the offline base.
postgres-image:
	@set -e; \
	case "$(POSTGRES_IMAGE)" in gpuhub/*) ;; *) echo "gpuhub: using $(POSTGRES_IMAGE) as it is"; exit 0;; esac; \
	pg_base=$$(images/offline-base/resolve-base.sh $(POSTGRES_UPSTREAM)); \
	echo "gpuhub: building $(POSTGRES_IMAGE) FROM $$pg_base"; \
	scripts/build-image.sh $(POSTGRES_IMAGE) -f images/postgres/Dockerfile --build-arg BASE_IMAGE=$$pg_base

# The hub database's server, when GPUHUB_DATABASE=postgres: its image, then (after the user network,
# which compose wants to exist) the server, waited for until it takes connections.
database-image: $(if $(filter postgres,$(DATABASE)),postgres-image)
START_DATABASE = if [ "$(DATABASE)" = postgres ]; then \
  $(COMPOSE) up -d postgres && scripts/wait-healthy.sh "$$($(COMPOSE) ps -q postgres)" 120; fi

$(ENV_FILE):
	@scripts/make-env.sh .env.example $@

up: $(ENV_FILE) $(if $(filter no,$(BUILD_NOTEBOOK)),hub-image,images) database-image
	@scripts/user-network.sh $(USER_NETWORK) $(USER_SUBNET) $(USER_BRIDGE) $(HUB_IP) $(USER_IP_RANGE)
	@$(START_DATABASE)
	GPUHUB_HUB_IP=$(HUB_IP) $(COMPOSE) up -d hub hub-watchdog
	@scripts/wait-and-greet.sh $(ENV_FILE)

down:
	$(COMPOSE) down

# What the host runs at boot and after every Docker restart (deploy/gpuhub.service, `make
# boot-install`): the user network and its firewall rules, which a reboot drops, then the hub; no
# image build. The hub and watchdog are re-created: a container that lived through a dockerd restart
# (live-restore) still holds the old, dead docker.sock. User servers are not touched; those that
# ran before a reboot are shown stopped ("the host or Docker restarted"), devices free, homes kept.
boot: $(ENV_FILE)
	@scripts/user-network.sh $(USER_NETWORK) $(USER_SUBNET) $(USER_BRIDGE) $(HUB_IP) $(USER_IP_RANGE)
	@$(START_DATABASE)
	GPUHUB_HUB_IP=$(HUB_IP) $(COMPOSE) up -d --force-recreate hub hub-watchdog
	@scripts/wait-and-greet.sh $(ENV_FILE)

boot-install: $(ENV_FILE)
	@scripts/install-boot-unit.sh $(ENV_FILE)

# More than one GPU server: the hub on this Swarm manager, user servers on the GPU nodes.
# Every node needs the notebook image (a registry, or `docker save | docker load`).
SWARM_STACK ?= gpuhub
swarm-up: $(ENV_FILE) $(if $(filter no,$(BUILD_NOTEBOOK)),hub-image,images)
	@scripts/swarm-up.sh $(ENV_FILE) $(SWARM_STACK)
	@scripts/wait-and-greet.sh $(ENV_FILE)

swarm-down:
	docker stack rm $(SWARM_STACK)

# Restart the hub (user servers keep running), e.g. after changing the settings file.
restart:
	@scripts/user-network.sh $(USER_NETWORK) $(USER_SUBNET) $(USER_BRIDGE) $(HUB_IP) $(USER_IP_RANGE)
	@$(START_DATABASE)
	GPUHUB_HUB_IP=$(HUB_IP) $(COMPOSE) up -d --force-recreate hub
	@scripts/wait-and-greet.sh $(ENV_FILE)

logs:
	$(COMPOSE) logs -f hub

# Backups (docs/admin.md, "Backups"): user servers keep running; what is consistent is said there.
backup: $(ENV_FILE)
	@COMPOSE="$(COMPOSE)" $(PYTHON) scripts/backup.py backup --env-file $(abspath $(ENV_FILE)) --dir $(abspath $(BACKUP_DIR)) \
	  $(if $(MATCH),--match '$(subst ','\'',$(MATCH))')

restore: $(ENV_FILE) hub-image $(if $(filter postgres,$(DATABASE)),postgres-image)
	@scripts/user-network.sh $(USER_NETWORK) $(USER_SUBNET) $(USER_BRIDGE) $(HUB_IP) $(USER_IP_RANGE)
	@test -n "$(BACKUP)" || { echo "gpuhub: name the archive: make restore BACKUP=$(BACKUP_DIR)/gpuhub-....tar" >&2; exit 2; }
	@COMPOSE="$(COMPOSE)" $(PYTHON) scripts/backup.py restore --env-file $(abspath $(ENV_FILE)) --archive $(BACKUP) \
	  $(if $(filter 1 yes true,$(FORCE)),--force)

# Upgrades with users on (docs/admin.md, "Upgrades"): new images, a backup of the hub database,
# JupyterHub's schema migration with the new image, then the new hub; running servers keep running
# and their leases, each user gets the new notebook image at their next start.
upgrade: $(ENV_FILE) $(if $(filter no,$(BUILD_NOTEBOOK)),hub-image,images) database-image
	@scripts/user-network.sh $(USER_NETWORK) $(USER_SUBNET) $(USER_BRIDGE) $(HUB_IP) $(USER_IP_RANGE)
	@$(START_DATABASE)
	@COMPOSE="$(COMPOSE)" $(PYTHON) scripts/backup.py backup --env-file $(abspath $(ENV_FILE)) --dir $(abspath $(BACKUP_DIR)) --database-only
	$(COMPOSE) stop hub-watchdog hub
	@# A failed migration: the previous hub starts again (its data as before, or from the backup just made).
	GPUHUB_HUB_IP=$(HUB_IP) $(COMPOSE) run --rm --no-deps -T hub jupyterhub upgrade-db -f /srv/gpuhub/jupyterhub_config.py \
	  || { echo "gpuhub: the database migration failed; the previous hub is started again" >&2; \
	       $(COMPOSE) start hub hub-watchdog; exit 1; }
	GPUHUB_HUB_IP=$(HUB_IP) $(COMPOSE) up -d --force-recreate hub hub-watchdog
	@scripts/wait-and-greet.sh $(ENV_FILE)

# --- tests -----------------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

$(TOOLS)/.installed:
	npm install --no-fund --no-audit --silent --prefix $(TOOLS) configurable-http-proxy@$(CHP_VERSION)
	@touch $@

# dockerspawner's own tests (from the pinned version's source distribution), which
# tests/integration/test_dockerspawner_suite.py runs against GPUDockerSpawner.
$(TOOLS)/dockerspawner-sdist/.installed: $(VENV)/.installed
	$(VENV)/bin/pip download -q --no-deps --no-binary :all: -d $(TOOLS)/dockerspawner-sdist \
	  "dockerspawner==$$($(VENV)/bin/python -c 'import dockerspawner; print(dockerspawner.__version__)')"
	@touch $@

# The sign-in tests' OpenID Connect provider (panva's oidc-provider, pinned by its lock file).
tests/oidc/node_modules/.installed: tests/oidc/package-lock.json
	npm ci --no-fund --no-audit --silent --prefix tests/oidc
	@touch $@

# JupyterHub's published OpenAPI description of its REST API (docs/source/_static/rest-api.yml in its
# sdist), for the hostile-input tests; the version is the one installed.
$(TOOLS)/jupyterhub-rest-api.yml: $(VENV)/.installed
	rm -rf $(TOOLS)/jupyterhub-sdist
	$(VENV)/bin/pip download -q --no-deps --no-binary :all: -d $(TOOLS)/jupyterhub-sdist \
	  "jupyterhub==$$($(VENV)/bin/python -c 'import jupyterhub; print(jupyterhub.__version__)')"
	tar -xzf $(TOOLS)/jupyterhub-sdist/jupyterhub-*.tar.gz -C $(TOOLS)/jupyterhub-sdist --wildcards '*/docs/source/_static/rest-api.yml'
	cp $(TOOLS)/jupyterhub-sdist/jupyterhub-*/docs/source/_static/rest-api.yml $@

dev-deps: $(VENV)/.installed $(TOOLS)/.installed tests/oidc/node_modules/.installed $(TOOLS)/dockerspawner-sdist/.installed \
  $(TOOLS)/jupyterhub-rest-api.yml

test-images: build-context
	@set -e; \
	base=$$(GPUHUB_OFFLINE=1 images/offline-base/resolve-base.sh unused); \
	if ls .build/wheelhouse/torch-*.whl >/dev/null 2>&1; then torch=wheelhouse; else torch=none; \
	  echo "gpuhub: no CPU torch wheel in $(TORCH_WHEELHOUSE); the test image has no torch"; fi; \
	echo "gpuhub: building $(TEST_NOTEBOOK_IMAGE) (CPU test variant, torch=$$torch) FROM $$base"; \
	scripts/build-image.sh $(TEST_NOTEBOOK_IMAGE) -f images/notebook/Dockerfile \
	  --build-arg BASE_IMAGE=$$base --build-arg TORCH=$$torch

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: $(VENV)/.installed
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# The multi-node tests alone (make test runs them too): 3 Swarm nodes, each its own dockerd.
test-swarm: dev-deps test-images
	GPUHUB_TEST_IMAGE=$(TEST_NOTEBOOK_IMAGE) $(VENV)/bin/pytest tests/swarm $(PYTEST_ARGS)

test: dev-deps test-images lint
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" GPUHUB_TEST_IMAGE=$(TEST_NOTEBOOK_IMAGE) \
	  $(VENV)/bin/pytest $(PYTEST_ARGS)

bench: dev-deps test-images
	$(VENV)/bin/python -m benchmarks.allocator
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(VENV)/bin/python -m benchmarks.queue_handoff --image $(TEST_NOTEBOOK_IMAGE)
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(VENV)/bin/python -m benchmarks.spawn_storm --image $(TEST_NOTEBOOK_IMAGE)
	$(VENV)/bin/python -m benchmarks.hub_recovery --image $(TEST_NOTEBOOK_IMAGE)
	$(VENV)/bin/python -m benchmarks.class_day
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(VENV)/bin/python -m benchmarks.telemetry_overhead
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(VENV)/bin/python -m benchmarks.console_pages
	$(VENV)/bin/python -m benchmarks.swarm_storm --image $(TEST_NOTEBOOK_IMAGE)
	$(VENV)/bin/python -m benchmarks.class_load --image $(TEST_NOTEBOOK_IMAGE)

clean-build:
	rm -rf .build
lock: build-context
	scripts/lock-notebook.sh

readme: $(VENV)/.installed
	$(VENV)/bin/python scripts/readme-settings.py
