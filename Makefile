# The two commands of the README:
#   make demo   bring up a working Weir on this machine
#   make test   run the whole test suite (unit, integration, e2e on a real cluster)
# Builds are cached under ~/.cache (cargo target dir, Go build cache, the
# Kubernetes binaries), so only the first run compiles everything.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
export CARGO_TERM_COLOR ?= never
CLUSTER := e2e/cluster

.PHONY: demo test install build lint crds up down unit e2e

install:
	$(CLUSTER)/install.sh

# One build command everywhere: `cargo test --no-run` builds the binaries the
# images hold with the same features as the tests, so nothing builds twice.
build:
	cargo test --workspace --no-run --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cd $(CLUSTER)/gotools && go mod verify >/dev/null

crds:
	cargo run -q -p weir-operator --bin crdgen -- crds

up: install build
	$(CLUSTER)/up.sh

down:
	$(CLUSTER)/down.sh

demo: up
	$(HOME)/.cache/weir/bin/kubectl --kubeconfig /var/lib/weir-lab/admin.kubeconfig get nodes -o wide
	@echo "cluster up: export KUBECONFIG=/var/lib/weir-lab/admin.kubeconfig"

# The life-cycle test stops and restarts the shared cluster, so it runs alone
# and first; every other test then reuses the cluster it leaves up.
test: install build lint
	cargo test --locked -p weir-e2e --test lifecycle -- --ignored
	cargo test --workspace --locked
