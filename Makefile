# openvox-code — the commands a person (and CI) runs. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help test demo deps lint fmt crds cluster-up cluster-down node-up node-down clean-cache bench-scale bench-operator bench-modules

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

test: deps lint ## Install what the tests need, then run every test tier
	# The end-to-end tests run the controller and worker binaries as processes.
	$(CARGO) build --workspace --bins --locked
	# --no-fail-fast: one CI run shows every failing test binary, not just the first.
	$(CARGO) test --workspace --all-targets --locked --no-fail-fast
	python3 tests/scripts/check-dockerfiles.py
	# The real-node tier: containerd + kubelet run the controller (Helm chart) and the
	# worker from images of the debug binaries above; a server pod mounts the code image.
	bash tests/scripts/node-tier.sh --worker $${CARGO_TARGET_DIR:-target}/debug/openvox-code-worker \
	  --controller $${CARGO_TARGET_DIR:-target}/debug/openvox-code-controller

demo: deps ## See the whole product work on this machine (control plane, git, registry, controller)
	$(CARGO) build --locked -p openvox-code-controller -p openvox-code-worker -p openvox-code-e2e --bins
	target/debug/openvox-demo --controller target/debug/openvox-code-controller --worker target/debug/openvox-code-worker

bench-scale: deps ## Scale benchmark: 1,000 CodeSources over 50 repos + 1,000 Pools, release controller (~8 min; not part of make test)
	$(CARGO) build --locked --release -p openvox-code-controller
	$(CARGO) build --locked -p openvox-code-e2e --bin openvox-scale-bench
	target/debug/openvox-scale-bench --controller target/release/openvox-code-controller

bench-operator: deps ## Beside openvox-operator: Service rewrites in 60 s next to its Pool writer, seconds from a Config write to the Deployment and to RolledOut (~3 min; not part of make test)
	$(CARGO) build --locked -p openvox-code-controller --bins
	set -o pipefail; OPENVOX_CODE_BESIDE_SECONDS=60 $(CARGO) test --locked -p openvox-code-controller --test beside_operator -- --nocapture next_to_the_operators on_our_crd 2>&1 | grep -E 'rewrites|^test '
	set -o pipefail; for run in 1 2 3; do $(CARGO) test --locked -p openvox-code-controller --test codesource -- --nocapture rollout::each 2>&1 | grep -E '^rollout:|^test ' || exit 1; done

bench-modules: ## Issue 19: release worker beside Debian's r10k, 8 branches x ~50 MB + 20 git modules, medians of 3, gzip levels (not part of make test)
	bash tests/scripts/install-deps.sh --bench
	job-image/scripts/bench-modules.sh

deps: ## Install test dependencies (idempotent; heavy builds cached in ~/.cache/openvox-code)
	bash tests/scripts/install-deps.sh

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/*.yaml from the Rust types
	$(CARGO) run -q -p openvox-crds --bin crdgen

cluster-up: deps ## Start a local control plane; prints the kubeconfig path last
	@bash tests/scripts/cluster.sh up

cluster-down: ## Stop the local control plane started by cluster-up (and the node of node-up)
	@bash tests/scripts/node.sh down
	@bash tests/scripts/cluster.sh down

node-up: deps ## Start the control plane and a real node (containerd, kubelet, scheduler; root); prints the kubeconfig path last
	@bash tests/scripts/cluster.sh up >/dev/null
	@bash tests/scripts/node.sh up

node-down: ## Stop the node of node-up (the control plane keeps running: make cluster-down)
	@bash tests/scripts/node.sh down

clean-cache: ## Remove cached control-plane builds and tools
	rm -rf $${OPENVOX_CODE_CACHE:-$$HOME/.cache/openvox-code}
