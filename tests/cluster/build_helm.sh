#!/bin/sh
# Build helm from its Go module at one pinned release, the way helm's own Makefile does
# (CGO off, -trimpath, version and Kubernetes-version ldflags), into a cache keyed by version.
# `go install pkg@version` is used as is: helm's go.mod has no replace directives, so its own
# go.sum pins every dependency. Prints the binary's path; builds nothing when it is there.
set -eu

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${GPUSCALE_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuscale/cluster}"
DEST="$CACHE/helm-$HELM_VERSION"
BIN="$DEST/helm"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { echo "build_helm: go is not installed" >&2; exit 1; }
MAJOR="$(echo "$HELM_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')"
MOD="helm.sh/helm/v$MAJOR"

# The Kubernetes version helm lints and templates against is its client-go's minor, as in helm's
# Makefile (client-go v0.N.x is Kubernetes 1.N).
go mod download "$MOD@$HELM_VERSION"
GOMOD="$(go env GOMODCACHE)/cache/download/$MOD/@v/$HELM_VERSION.mod"
K8S_MINOR="$(sed -nE 's#^[[:space:]]*k8s.io/client-go v0\.([0-9]+)\..*#\1#p' "$GOMOD" | head -n1)"
[ -n "$K8S_MINOR" ] || { echo "build_helm: no k8s.io/client-go in $GOMOD" >&2; exit 1; }

case "$MAJOR" in
    3) CHARTUTIL="$MOD/pkg/chartutil" ;;
    *) CHARTUTIL="$MOD/pkg/chart/common" ;;
esac
LDFLAGS="-w -s -X $MOD/internal/version.version=$HELM_VERSION"
LDFLAGS="$LDFLAGS -X $MOD/internal/version.gitTreeState=clean"
LDFLAGS="$LDFLAGS -X $MOD/pkg/lint/rules.k8sVersionMajor=1 -X $MOD/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR"
LDFLAGS="$LDFLAGS -X $CHARTUTIL.k8sVersionMajor=1 -X $CHARTUTIL.k8sVersionMinor=$K8S_MINOR"

TMP="$DEST.tmp.$$"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP"
echo "build_helm: building $MOD/cmd/helm@$HELM_VERSION (Kubernetes 1.$K8S_MINOR)" >&2
GOBIN="$TMP" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
    nice -n "${BUILD_NICE:-10}" go install -ldflags "$LDFLAGS" "$MOD/cmd/helm@$HELM_VERSION"
"$TMP/helm" version --short >&2
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
echo "$BIN"
