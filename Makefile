# `make test` and `make demo` work on a fresh Debian machine: they create .venv, install the
# package with its extras, and install Debian's prometheus (the tests start their own server).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test e2e cluster demo lint typecheck imports pytest bench prometheus clean helm fuzz \
	e2e-packages image image-tools image-test lock protos prometheus-sd

# The test venv installs the hashed lock first (`make lock` refreshes it), then the project itself
# (editable; its dependencies are already there from the lock, and one added to pyproject but not
# yet locked still installs, while tests/image/test_lock.py fails and says to run `make lock`).
$(STAMP): pyproject.toml requirements/test.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements/test.lock
	$(PY) -m pip install -q -e '.[sim,test,dev,ray]'
	touch $@

prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP) prometheus helm
	$(BIN)/pytest -q -m "not cluster"

# helm, built from its Go module (tests/cluster/build_helm.sh) into
# ~/.cache/gpuscale/cluster/helm-<version>/; builds nothing when cached. Without Go the chart
# tests skip and say why.
helm:
	@if command -v go >/dev/null; then sh tests/cluster/build_helm.sh >/dev/null; \
	else echo "make helm: no Go on PATH; tests/deploy/test_helm.py will be skipped"; fi

# The real control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd,
# kwok) and the real node (kubelet, kube-proxy, its pause and workload images) built from pinned
# Go modules and tests/cluster/node/*.c into ~/.cache/gpuscale/cluster/; builds nothing when cached.
cluster:
	@command -v go >/dev/null || { echo "make cluster needs Go 1.26+ on PATH"; exit 1; }
	python3 tests/cluster/build.py

# Debian packages the e2e needs, with one `apt-get update` for all that are missing: Prometheus,
# and for the real node (tests/e2e/node.py) containerd, runc, the CNI plugins, iptables, iproute2
# and musl-gcc (its two static images). Installs nothing when all are there.
E2E_PACKAGES := prometheus containerd runc containernetworking-plugins iptables iproute2 musl-tools
e2e-packages:
	@missing=$$(for p in $(E2E_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "make e2e: installing $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Prometheus with Kubernetes service discovery (Debian's has none), built from its pinned Go
# module (tests/cluster/build_prometheus.sh) into ~/.cache/gpuscale/cluster/prometheus-<version>/
# for the chart scenario's scrape of real pods; builds nothing when cached.
prometheus-sd:
	@command -v go >/dev/null || { echo "make prometheus-sd needs Go 1.26+ on PATH"; exit 1; }
	@sh tests/cluster/build_prometheus.sh >/dev/null

# End-to-end tests against that control plane and a real node (and the kind tests, which skip
# without Docker).
e2e: $(STAMP) e2e-packages prometheus cluster helm image prometheus-sd
	$(BIN)/pytest -q -m "cluster or e2e" tests/e2e

test: lint typecheck imports pytest

# The kubelet device plugin and PodResources bindings (committed) from their .proto files.
protos: $(STAMP)
	PYTHON=$(PY) sh extender/device_plugin/proto/generate.sh

# Longer fuzzing than the seeded runs of `make test`: atheris for FUZZ_SECONDS per target (the
# corpus grows in .fuzz/<target>/, crashes land in .fuzz/ as <target>-crash-*; copy one into
# tests/fuzz/regressions/<target>/ once fixed), then the HTTP fuzz with FUZZ_EXAMPLES examples.
FUZZ_SECONDS ?= 300
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	@for t in extender_request extender_body policy_document policy_json; do mkdir -p .fuzz/$$t; \
	  echo "== atheris $$t ($(FUZZ_SECONDS) s, log in .fuzz/$$t.log)"; \
	  $(PY) -m tests.fuzz.atheris_main $$t .fuzz/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=.fuzz/$$t- >.fuzz/$$t.log 2>&1; rc=$$?; \
	  grep -E "DONE|^Done" .fuzz/$$t.log; [ $$rc = 0 ] || { tail -40 .fuzz/$$t.log; exit 1; }; done
	GPUSCALE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/fuzz/test_http.py

demo: $(STAMP)
	$(BIN)/gpuscale simulate --out demo-report

bench: $(STAMP) prometheus cluster
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Hashed locks (uv pip compile): runtime.lock is what the image installs (`.[gpu]`), build.lock
# the build backend that makes the wheel in the image, test.lock `make test`'s venv. A plain
# `make lock` keeps every pin that still satisfies pyproject; `make lock UPGRADE=1` takes the
# newest versions. Linux x86_64 and aarch64 wheels alike: the resolution is universal.
UV ?= $(BIN)/uv
LOCK_FLAGS = --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
lock: $(STAMP)
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml --extra gpu -o requirements/runtime.lock
	$(UV) pip compile $(LOCK_FLAGS) requirements/build.in -o requirements/build.lock
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml --extra sim --extra test --extra dev \
	  --extra ray --extra gpu -o requirements/test.lock

# The images, without a registry (tests/cluster/build_images.py says how): build/images/gpuscale.tar
# (localhost/gpuscale:dev) and build/images/kube-scheduler.tar (localhost/kube-scheduler:<k8s
# version>), for `ctr -n k8s.io images import`. GPUSCALE_BUILD_CA (default: this machine's CA
# bundle) is the CA pip trusts in the build; GPUSCALE_INDEX_URL an index to use instead of PyPI.
image-tools:
	@command -v buildah >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends buildah runc mmdebstrap uidmap; }

# Needs only the control-plane build of `make cluster` (for kube-scheduler), not the node's.
image: image-tools
	@command -v go >/dev/null || { echo "make image needs Go 1.26+ on PATH (kube-scheduler)"; exit 1; }
	python3 tests/cluster/build.py kubernetes
	python3 -m tests.cluster.build_images

# Checks on the built image (uid, read-only root, bytecode, no pip or scipy, the lock).
image-test: image $(STAMP)
	$(BIN)/pytest -q tests/image

clean:
	rm -rf $(VENV) demo-report .mypy_cache .pytest_cache .ruff_cache
