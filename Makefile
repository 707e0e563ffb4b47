# lockstep.virt - everything runs from the checkout: no global install of the collection.
SHELL := /bin/bash
.DEFAULT_GOAL := help

SYSTEM_PYTHON ?= /usr/bin/python3
VENV := $(CURDIR)/.venv
COLLECTIONS := $(CURDIR)/.build/collections
LAB := $(CURDIR)/tests/lab/lab
HOSTS ?= 2
# hosts without a lock manager (inventory group unlocked_hypervisors): tests/run-all brings the lab up with one,
# and a lab brought up with other hosts is taken down and made anew - so every target brings up the same lab
UNLOCKED ?= 1

export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help deps venv collection lab lab-down lab-status demo test unit integration faults faults-sanlock lint sanity docs bench build clean

help:
	@echo "make demo    set up everything and run the main job on the local lab"
	@echo "make test    run every test (unit, lab integration, lint) on the local lab"
	@echo "make lab | lab-down | lab-status | unit | integration | faults | faults-sanlock | lint | sanity | docs | bench | build"

# Debian packages for the controller and the lab (python3 first: the lab tool needs it)
deps:
	@command -v python3 >/dev/null && [ -x $(SYSTEM_PYTHON) ] || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3; }
	@$(LAB) deps

# Debian's python3-libvirt and python3-lxml are seen through --system-site-packages
$(VENV)/.installed: requirements.txt
	@[ -x $(VENV)/bin/python ] || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	@touch $@

venv: deps $(VENV)/.installed

collection:
	@mkdir -p $(COLLECTIONS)/ansible_collections/lockstep
	@ln -sfn $(CURDIR) $(COLLECTIONS)/ansible_collections/lockstep/virt

lab: deps
	$(LAB) up --hosts $(HOSTS) --unlocked $(UNLOCKED)

lab-down:
	$(LAB) down

lab-status:
	$(LAB) status

demo: venv collection lab
	ansible-playbook -i "$$($(LAB) inventory)" playbooks/demo.yml

test: venv collection
	tests/run-all

unit: venv collection
	pytest -q tests/unit

# the lab as tests/run-all brings it up, with the host that has no lock manager (two tests need it)
integration: venv collection lab
	pytest -q tests/integration

# bad input, secrets and the fault matrix on the lab (the table of faults injected, survived, lost at the end)
faults: venv collection lab
	pytest -q -rs -p no:cacheprovider tests/faults

# the sanlock pass of make test: a second lab (LOCKSTEP_LAB_ID=1) with sanlock, test_sanlock and the fault matrix
faults-sanlock: venv collection
	tests/run-sanlock

lint: venv collection
	ruff check .
	ruff format --check .
	ansible-lint

sanity: venv collection
	tests/sanity/run

docs: venv collection
	python docs/generate.py

bench: venv collection lab
	python benchmarks/run.py

build: venv collection
	ansible-galaxy collection build --force --output-path .build/dist .

clean:
	rm -rf .build .pytest_cache .ruff_cache .hypothesis
