# The two commands a newcomer needs: `make dev` (the whole system locally) and `make test` (every test).
SHELL := /bin/bash
VENV ?= .venv
CARGO ?= cargo
TASKS_EMULATOR_VERSION := 0.6.2
# checkov, the static analyser of the Terraform in infra/ (its own venv: its pins clash with the tests')
CHECKOV_VERSION := 3.3.30
INFRA_VENV ?= .venv-infra
KLAVIYO_SDK := tests/klaviyo-sdk/requirements.txt
# Where `cargo build --release` puts the binaries (the benchmarks run them from there, unrebuilt).
RELEASE_DIR := $(or $(CARGO_TARGET_DIR),target)/release

.PHONY: dev test bench lint fmt build venv clean-venv oauth-interop browser infra-check deploy image-check load fuzz soak

## dev: run all five functions, both simulators and a demo tenant on http://localhost:$${PORT:-8080}
dev:
	$(CARGO) run -p local

## test: the infra checks, then start the Firestore and Cloud Tasks emulators and run every test of the workspace
test: venv oauth-interop browser infra-check
	$(CARGO) build --workspace --bins
	tests/emulators.sh $(CARGO) nextest run --workspace --no-fail-fast

## bench: cold start (exec → first 200 on /health) and idle RSS of each function beside an axum hello-world,
## then omneo-webhook's and klaviyo-webhook's ingest throughput beside an empty handler and Node.js receivers (needs wrk: installed if missing),
## then the outbound sync's share of Klaviyo's quota and its writes per profile change, against the simulators,
## then the inbound worker's Omneo writes per Klaviyo delivery and its pace,
## then a 100,000-profile backfill through Klaviyo's bulk jobs beside the per-profile path (real limits)
bench:
	command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wrk; \
		else sudo apt-get update && sudo apt-get install -y wrk; fi; }
	$(CARGO) build --release --workspace --bins
	$(RELEASE_DIR)/bench-startup
	$(RELEASE_DIR)/bench-ingest
	$(RELEASE_DIR)/bench-outbound
	$(RELEASE_DIR)/bench-inbound
	$(RELEASE_DIR)/bench-backfill

## infra-check: terraform fmt -check, terraform validate (skipped with a notice where the provider registry is
## unreachable) and checkov on infra/ (the Rust test `infra` checks it against the code, inside `make test`)
infra-check: $(INFRA_VENV)/.installed-checkov-$(CHECKOV_VERSION)
	CHECKOV=$(CURDIR)/$(INFRA_VENV)/bin/checkov infra/check.sh

$(INFRA_VENV)/.installed-checkov-$(CHECKOV_VERSION):
	python3 -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@

## deploy: build and push the image, then terraform apply (PROJECT=… required; docs/operations.md, "Deploying")
deploy:
	infra/deploy.sh

## load: sustained ingest at 12.5x the assumed peak (250 requests/s) on both receivers for 2 minutes each, on the Firestore and
## Cloud Tasks emulators, beside an empty handler on the same server; fails when a request failed or a 202 is missing from the queue
load: venv oauth-interop
	$(CARGO) build --release -p harness --bin bench-load --bin bench-ingest-server
	tests/emulators.sh taskset -c 1 $(RELEASE_DIR)/bench-load

## soak: the fault-injection soak at full size (3 tenants, 1,000 Omneo edits, 1,000 Klaviyo consent changes, Flow rewards and
## metric calls over 2 minutes of 20 % simulator faults, a backfill, paused queues and a killed worker), on the memory store, then
## on the Firestore emulator; prints the totals and fails when the final state differs from the oracle (docs/reliability.md)
soak: venv oauth-interop
	$(CARGO) build --release -p harness --bin soak
	tests/emulators.sh $(RELEASE_DIR)/soak

## fuzz: each cargo-fuzz target of tests/fuzz for 60 s (cargo-fuzz installed if missing; stable Rust through RUSTC_BOOTSTRAP,
## no sanitizer), from its seeds in tests/fuzz/corpus/<target>; new inputs go to tests/fuzz/scratch (ignored), crashes to tests/fuzz/artifacts
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd tests/fuzz && for target in klaviyo_webhook omneo_webhook omneo_event_context settings exclude_logic; do \
		mkdir -p scratch/$$target && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none $$target scratch/$$target corpus/$$target -- -max_total_time=60 || exit 1; \
	done

## lint: formatting and clippy (warnings are errors)
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## build: release build of every binary
build:
	$(CARGO) build --release --workspace --bins

## image-check: the container image without a Docker engine: the Dockerfile checked against the workspace's function crates,
## then the release binaries it copies, built by the Dockerfile's own command, run as Cloud Run would (GET /health, SIGTERM → exit 0,
## a missing variable named; STORE=memory QUEUE=local: no cloud here)
image-check:
	$(CARGO) build --release --locked -p oauth-callback -p klaviyo-webhook -p omneo-webhook -p inbound-task -p outbound-task
	$(CARGO) build --release --locked -p harness --bin image-check
	$(RELEASE_DIR)/image-check

## venv: the Python environment of the tests: the Cloud Tasks emulator (PyPI gcloud-tasks-emulator) and Klaviyo's Python SDK (pinned in $(KLAVIYO_SDK))
venv: $(VENV)/.installed-$(TASKS_EMULATOR_VERSION)-klaviyo-sdk

$(VENV)/.installed-$(TASKS_EMULATOR_VERSION)-klaviyo-sdk: $(KLAVIYO_SDK)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check gcloud-tasks-emulator==$(TASKS_EMULATOR_VERSION) -r $(KLAVIYO_SDK)
	touch $@

## oauth-interop: the third-party OAuth 2.0 server of the interop test (npm oauth2-mock-server, pinned by its lock file)
oauth-interop: tests/oauth-interop/node_modules/.package-lock.json

tests/oauth-interop/node_modules/.package-lock.json: tests/oauth-interop/package-lock.json
	cd tests/oauth-interop && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## browser: playwright-core (npm, pinned by its lock file; no browser download) for the install-in-Chromium test;
## the browser is Debian's chromium package (.ci/run installs it)
browser: tests/browser/node_modules/.package-lock.json

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean-venv:
	rm -rf $(VENV) $(INFRA_VENV)
