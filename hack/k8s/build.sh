#!/usr/bin/env bash
# Build a real kube-apiserver and etcd for the integration tests in tests/kube/.
#
#     hack/k8s/build.sh               # etcd + kube-apiserver (what CI runs)
#     hack/k8s/build.sh kube-proxy    # ... and the upstream kube-proxy too, for
#                                     # the comparison benchmark (bench/anchors/)
#
# All come from the Go module proxy at the versions pinned in hack/k8s/go.mod
# and land in ${NFTPROXY_K8S_CACHE:-$HOME/.cache/nftproxy/k8s}/<k8s-version>/.
# Idempotent: when the requested binaries are already there it prints them and
# exits.
#
# A cold build takes several minutes of CPU; it runs under `nice` with at most
# two parallel compile jobs (override with GOFLAGS, e.g. GOFLAGS=-p=1).
set -euo pipefail

# What to build: always etcd and kube-apiserver; extra binaries only on request.
targets=(etcd kube-apiserver)
for arg in "$@"; do
    case $arg in
    kube-proxy) [[ " ${targets[*]} " == *" kube-proxy "* ]] || targets+=(kube-proxy) ;;
    *)
        echo "usage: build.sh [kube-proxy]" >&2
        exit 2
        ;;
    esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
if [[ -z "$version" ]]; then
    echo "build.sh: cannot find the k8s.io/kubernetes version in $here/go.mod" >&2
    exit 1
fi
dest=${NFTPROXY_K8S_CACHE:-$HOME/.cache/nftproxy/k8s}/$version

report() {
    local t
    for t in "${targets[@]}"; do
        printf '%-15s %s\n' "$t:" "$dest/$t"
    done
}

have_all() {
    local t
    for t in "${targets[@]}"; do
        [[ -x "$dest/$t" ]] || return 1
    done
}

if have_all; then
    report
    exit 0
fi

mkdir -p "$dest"
# Serialise concurrent builds (two test sessions starting at once).
exec 9>"$dest/.lock"
flock 9
if have_all; then
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
declare -A package=(
    [etcd]=go.etcd.io/etcd/server/v3
    [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
    [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
)
for t in "${targets[@]}"; do
    build "$t" "${package[$t]}"
done
echo "build.sh: built in $((SECONDS - start))s" >&2
report
