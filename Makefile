# lockstep.cluster — two commands matter: `make demo` (site.yml against the local lab) and
# `make test` (every gate). Everything else is a step of those.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ROOT      := $(CURDIR)
VENV      := $(ROOT)/.venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.synced
COLL      := $(ROOT)/.cache/ansible_collections/lockstep/cluster
SCENARIOS ?= default mpich debian13 drift faults airgap cluster

export PATH := $(BIN):$(PATH)
export CONTAINERS_CONF ?= $(ROOT)/lab/containers.conf
export ANSIBLE_CONFIG := $(ROOT)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 0
# A hand-installed collection of the same name must never shadow this checkout.
export ANSIBLE_COLLECTIONS_PATH := $(ROOT)/.collections

.PHONY: help host-deps venv requirements images lab-up lab-down lock-arg demo drift test unit lint sanity \
        build molecule molecule-full lock lock-check lock-pylock bench clean ee-check

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	@uv=$$(scripts/bootstrap-uv.sh); \
	  [ -x $(BIN)/python ] || $$uv venv -q --python python3 $(VENV); \
	  $$uv pip sync -q --require-hashes --python $(BIN)/python requirements.txt
	@touch $@

venv: $(STAMP) ## controller + test toolchain in .venv (hash-locked)

host-deps: ## check (as root: install) the Debian packages the lab and tests need
	scripts/host-deps.sh

requirements: ## re-lock the toolchain from requirements.in
	uv=$$(scripts/bootstrap-uv.sh); $$uv pip compile -q --universal --python-version 3.11 \
	  --generate-hashes requirements.in -o requirements.txt

images: host-deps ## build localhost/lockstep-debian{12,13} (kept while their recipe is current)
	scripts/build-images.sh

# LAB_INVENTORY: another inventory with a `lab` group (e.g. a generated, bigger lab).
LAB_INVENTORY ?= inventories/lab
# LOCK: the lock demo and drift sync and audit on the lab (inventories/lab/group_vars/lab.yml):
# smoke (default) or mlperf (the MLPerf Storage client; torch +cpu from LOCKSTEP_WHEELS).
LOCK ?= smoke
export LOCKSTEP_WHEELS ?= /opt/wheels

lab-up: host-deps venv images ## SSH lab: bridge network + one sshd container per host of the lab group
	ansible-playbook -i $(LAB_INVENTORY) lab/lab.yml -e lab_state=up

lab-down: host-deps venv ## remove the lab's containers and network (keeps its key pair and the images)
	ansible-playbook -i $(LAB_INVENTORY) lab/lab.yml -e lab_state=down

lock-arg:
	@case "$(LOCK)" in smoke|mlperf) ;; *) echo "LOCK=$(LOCK): use LOCK=smoke (default) or LOCK=mlperf" >&2; exit 2;; esac

demo: lock-arg lab-up ## site.yml against the local lab (LOCK=smoke|mlperf), then show the report
	ansible-playbook -i $(LAB_INVENTORY) site.yml -e lab_lock=$(LOCK)
	@if [ -e reports/latest/summary.md ]; then \
	  echo "report: $$(readlink -f reports/latest)/"; cat reports/latest/summary.md; fi

drift: lock-arg venv ## audit the lab against the lock (LOCK=smoke|mlperf; changes nothing; non-zero on drift)
	ansible-playbook -i $(LAB_INVENTORY) playbooks/drift.yml -e validate_fail_on_drift=true -e lab_lock=$(LOCK)

test: host-deps venv images unit lint sanity build ee-check molecule ## every gate: unit, lint, sanity, build, EE, molecule

unit: venv ## pytest for module_utils and plugins
	pytest tests/unit -q

lint: venv ## ansible-lint --profile production
	ansible-lint --profile production

# ansible-test only runs from …/ansible_collections/<ns>/<name>: copy the tracked tree there.
sanity: venv ## ansible-test sanity (offline-capable)
	scripts/sanity.sh

build: venv ## ansible-galaxy collection build
	rm -rf .cache/build && mkdir -p .cache/build
	ansible-galaxy collection build --output-path .cache/build .
	@tar -tzf .cache/build/lockstep-cluster-*.tar.gz > .cache/build/contents.txt
	@! grep -E '^(tests|bench|molecule|\.venv|\.cache|\.collections|lab)/' .cache/build/contents.txt \
	  || { echo "build: tarball carries test/dev files" >&2; exit 1; }
	@echo "build: $$(ls .cache/build/*.tar.gz)"

# The image build needs a registry for its base image: only the context is made and checked.
ee-check: venv ## ansible-builder create: the execution environment build context in .cache/ee
	rm -rf .cache/ee
	ansible-builder create --file meta/execution-environment.yml --context .cache/ee
	@test -s .cache/ee/Containerfile || { echo "ee-check: no Containerfile" >&2; exit 1; }
	@grep -q '^ARG EE_BASE_IMAGE=' .cache/ee/Containerfile || { echo "ee-check: base image is not a build arg" >&2; exit 1; }
	@grep -q '^packaging' .cache/ee/_build/requirements.txt || { echo "ee-check: packaging missing from the context" >&2; exit 1; }
	@grep -q 'openssh' .cache/ee/_build/bindep.txt || { echo "ee-check: bindep file missing from the context" >&2; exit 1; }
	@echo "ee-check: build context in .cache/ee"

molecule: host-deps venv images ## all molecule scenarios, one after another
	for s in $(SCENARIOS); do molecule test -s $$s || exit 1; done

molecule-full: venv images ## opt-in: MLPerf Storage lock on 3 SSH hosts + DLIO across them (shared /data)
	molecule test -s full

lock: venv ## regenerate lockfiles/*.txt from their .in
	scripts/lock.sh lock

lock-pylock: venv ## write lockfiles/pylock.<name>.toml, the PEP 751 twin of each lock (not committed)
	scripts/lock.sh pylock

lock-check: venv ## fail when a committed lock is not current
	scripts/lock.sh check

bench: venv images ## performance ratios (prints, never asserts)
	bench/probe.sh
	python bench/site_bench.py

clean: lab-down ## remove the lab, build output, caches and scenario volumes (keeps images)
	rm -rf .cache/build .cache/ansible_collections .cache/lab tests/output reports bench/results
	podman volume ls -q | grep -E '^lockstep-' | xargs -r podman volume rm -f
