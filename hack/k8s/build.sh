#!/usr/bin/env bash
# Build a real kube-apiserver and etcd for the integration tests in tests/kube/.
#
# Both come from the Go module proxy at the versions pinned in hack/k8s/go.mod
# and land in ${NFTPROXY_K8S_CACHE:-$HOME/.cache/nftproxy/k8s}/<k8s-version>/.
# Idempotent: when both binaries are already there it prints them and exits.
#
# A cold build takes several minutes of CPU; it runs under `nice` with at most
# two parallel compile jobs (override with GOFLAGS, e.g. GOFLAGS=-p=1).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
if [[ -z "$version" ]]; then
    echo "build.sh: cannot find the k8s.io/kubernetes version in $here/go.mod" >&2
    exit 1
fi
dest=${NFTPROXY_K8S_CACHE:-$HOME/.cache/nftproxy/k8s}/$version

report() {
    echo "kube-apiserver: $dest/kube-apiserver"
    echo "etcd:           $dest/etcd"
}

have_both() { [[ -x "$dest/kube-apiserver" && -x "$dest/etcd" ]]; }

if have_both; then
    report
    exit 0
fi

mkdir -p "$dest"
# Serialise concurrent builds (two test sessions starting at once).
exec 9>"$dest/.lock"
flock 9
if have_both; then
    report
    exit 0
fi

minor=${version#v1.}
minor=${minor%%.*}
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--p=2}"

build() { # <output name> <package>
    local out=$1 pkg=$2 tmp
    [[ -x "$dest/$out" ]] && return 0
    tmp="$dest/.$out.tmp.$$"
    echo "build.sh: building $pkg -> $dest/$out" >&2
    (cd "$here" && nice -n 10 go build -trimpath -ldflags="$ldflags" -o "$tmp" "$pkg") || {
        rm -f "$tmp"
        return 1
    }
    mv -f "$tmp" "$dest/$out"
}

start=$SECONDS
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
echo "build.sh: built in $((SECONDS - start))s" >&2
report
