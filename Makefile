# The two commands of the README:
#   make demo   the user journey on this machine: a local Kubernetes, Weir
#               installed with Helm, a dataset in a local S3 read by a pod
#               through its PVC, a DataLoad; make demo-down removes it
#   make test   run the whole test suite (unit, integration, e2e on a real cluster)
# Without Kubernetes: make local-demo (one master, worker and FUSE mount of a
# directory at /mnt/weir-demo; make local-demo-down).
# Builds are cached under ~/.cache (cargo target dir, Go build cache, the
# Kubernetes binaries), so only the first run compiles everything.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
export CARGO_TERM_COLOR ?= never
CLUSTER := e2e/cluster
HELM ?= $(HOME)/.cache/weir/bin/helm

DEMO := /tmp/weir-demo
WEIR := $(CARGO_TARGET_DIR)/debug/weir

.PHONY: demo demo-down local-demo local-demo-down test install build lint crds up down unit e2e bench

install:
	$(CLUSTER)/install.sh

# One build command everywhere: `cargo test --no-run` builds the binaries the
# images hold with the same features as the tests, so nothing builds twice.
build:
	cargo test --workspace --no-run --locked

lint:
	$(HELM) lint --strict charts/weir
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cd $(CLUSTER)/gotools && go mod verify >/dev/null

crds:
	cargo run -q -p weir-operator --bin crdgen -- crds

# Nodes of the test-bed cluster: the first is this machine, the others live
# in namespaces of their own (e2e/README.md, "More nodes").
NODES ?= 1
export NODES

up: install build
	$(CLUSTER)/up.sh

down:
	$(CLUSTER)/down.sh

demo: install build
	e2e/demo.sh

demo-down:
	e2e/demo.sh down

local-demo: install build
	-$(WEIR) local down --state-dir $(DEMO)/state >/dev/null 2>&1
	mkdir -p $(DEMO)/data/train
	echo "Weir serves this file from its cache." > $(DEMO)/data/README.txt
	for i in 0 1 2 3; do head -c 8M /dev/urandom > $(DEMO)/data/train/part-$$i.bin; done
	$(WEIR) local up $(DEMO)/data --mount-point /mnt/weir-demo --state-dir $(DEMO)/state
	ls -lR /mnt/weir-demo
	cat /mnt/weir-demo/README.txt
	$(WEIR) admin report

local-demo-down:
	$(WEIR) local down --state-dir $(DEMO)/state

# The benchmark report (bench/report/): release builds, root, no cluster.
bench:
	bench/suite.sh

# The life-cycle test stops and restarts the shared cluster, so it runs alone
# and first; every other test then reuses the cluster it leaves up: three
# nodes, so pods, workers and mounts are spread as on a real cluster.
test: NODES = 3
test: install build lint
	cargo test --locked -p weir-e2e --test lifecycle -- --ignored
	cargo test --workspace --locked
