# shardsort — the two commands users need: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test test-unit test-workflow lint dryrun bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/python -m pytest -q tests
	$(BIN)/snakemake --lint
	$(BIN)/snakemake -n --cores 2 --quiet rules

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf results .snakemake

# A real single-node SLURM cluster on this machine (root, Debian/Ubuntu; a few
# minutes): sorts a small recording through profiles/slurm and checks that it
# equals a local sort. Not part of `make test`.
.PHONY: test-cluster
test-cluster: install
	$(BIN)/python -m pip install --quiet -e ".[cluster]"
	tests/cluster/run_slurm_test.sh slurm

# `make bench-peers`: shardsort against SpykingCircus2, Tridesclous2 and MountainSort5 on
# generated ground truth (benchmarks/peers/README.md); PEERS_ARGS=--quick for a short run.
# SpykingCircus2's default motion correction needs torch: the CPU build is pinned here
# (elsewhere: PEERS_TORCH="torch --index-url https://download.pytorch.org/whl/cpu").
PEERS_STAMP := $(VENV)/.peers-installed
PEERS_TORCH ?= torch==2.13.0+cpu
PEERS_ARGS ?=
# Optional YAML merged over config/config.yaml for shardsort (default: none).
PEERS_SHARDSORT_CONFIG ?=

.PHONY: bench-peers
bench-peers: $(PEERS_STAMP)
	$(BIN)/python benchmarks/peers/run_peers.py \
		$(if $(PEERS_SHARDSORT_CONFIG),--shardsort-configfile $(PEERS_SHARDSORT_CONFIG)) $(PEERS_ARGS)

# `make bench-drift`: the drift benchmark matrix (issue 14): drifting ground-truth recordings
# of several drift shapes, shardsort (defaults) vs SpykingCircus2 and Tridesclous2, drift
# estimate error; benchmarks/results/drift.{md,csv,json}. DRIFT_ARGS=--wide adds 384 channels.
DRIFT_ARGS ?=

.PHONY: bench-drift
bench-drift: $(PEERS_STAMP)
	$(BIN)/python benchmarks/peers/drift_matrix.py $(DRIFT_ARGS)

# `make bench-accuracy`: the accuracy matrix (issue 15): static ground truth from SpikeInterface
# (32/64 ch), the project's generator (96 ch) and MEArec biophysical units (64 ch), tuning and
# held-out seeds, shardsort (defaults) vs SpykingCircus2, Tridesclous2 and MountainSort5;
# benchmarks/results/accuracy.{md,csv,json}, accuracy_units.csv. ACCURACY_ARGS=--wide adds
# 384 channels; --only NAME,... a subset. Installs the `mearec` extra (MEArec, NEURON, LFPy).
ACCURACY_ARGS ?=
MEAREC_STAMP := $(VENV)/.mearec-installed

.PHONY: bench-accuracy
bench-accuracy: $(PEERS_STAMP) $(MEAREC_STAMP)
	$(BIN)/python benchmarks/peers/accuracy_matrix.py $(ACCURACY_ARGS)

$(MEAREC_STAMP): $(PEERS_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[mearec]"
	touch $@

$(PEERS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[peers]"
	$(BIN)/python -m pip install --quiet $(PEERS_TORCH)
	touch $@
