#!/bin/sh
# Build Prometheus with Kubernetes service discovery, from its Go module at one pinned release,
# for the e2e's scrape of real pods (tests/e2e/vllm_pods.py). Debian's prometheus (2.42, which
# the other tests use) is built without kubernetes_sd_configs, and the Prometheus images cannot
# be pulled here. Only the Kubernetes discoverer is compiled in (Prometheus' build tags
# remove_all_sd + enable_kubernetes_sd: no cloud SDKs), no web UI assets (the HTTP API is all the
# tests use), CGO off, -trimpath, the version stamped as Prometheus' Makefile does. `go install
# pkg@version` is used as is: the module's own go.sum pins every dependency. Prints the binary's
# path; builds nothing when it is there.
set -eu

# Prometheus 3.N.P is Go module v0.(300+N).P.
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.316.0}"
CACHE="${GPUSCALE_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuscale/cluster}"
DEST="$CACHE/prometheus-$PROMETHEUS_MODULE_VERSION"
BIN="$DEST/prometheus"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { echo "build_prometheus: go is not installed" >&2; exit 1; }
MOD="github.com/prometheus/prometheus"
MINOR="$(echo "$PROMETHEUS_MODULE_VERSION" | sed -nE 's/^v0\.3([0-9][0-9])\.([0-9]+)$/\1/p')"
PATCH="$(echo "$PROMETHEUS_MODULE_VERSION" | sed -nE 's/^v0\.3[0-9][0-9]\.([0-9]+)$/\1/p')"
[ -n "$MINOR" ] || { echo "build_prometheus: $PROMETHEUS_MODULE_VERSION is not v0.3NN.P" >&2; exit 1; }
VERSION="3.$(expr "$MINOR" + 0).$PATCH"
LDFLAGS="-w -s -X github.com/prometheus/common/version.Version=$VERSION"
LDFLAGS="$LDFLAGS -X github.com/prometheus/common/version.Branch=HEAD"

TMP="$DEST.tmp.$$"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP"
echo "build_prometheus: building $MOD/cmd/prometheus@$PROMETHEUS_MODULE_VERSION ($VERSION," \
    "Kubernetes discovery only)" >&2
GOBIN="$TMP" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
    nice -n "${BUILD_NICE:-10}" go install -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags "$LDFLAGS" "$MOD/cmd/prometheus@$PROMETHEUS_MODULE_VERSION"
"$TMP/prometheus" --version >&2
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
echo "$BIN"
