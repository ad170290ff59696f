#!/usr/bin/env bash
# Build a real kube-apiserver and etcd for the integration tests in tests/kube/.
#
#     hack/k8s/build.sh               # etcd + kube-apiserver (what CI runs)
#     hack/k8s/build.sh kube-proxy    # ... and the upstream kube-proxy too, for
#                                     # the comparison benchmark (bench/anchors/)
#     hack/k8s/build.sh cluster       # ... and what hack/cluster needs: kubelet,
#                                     # kube-controller-manager, kube-scheduler,
#                                     # kubectl, kube-proxy, agnhost,
#                                     # regression-issue-74839 and e2e.test
#                                     # (the network specs only, see e2e/)
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
cluster_targets=(kubelet kube-controller-manager kube-scheduler kubectl kube-proxy
    agnhost regression-issue-74839 e2e.test)
want() { [[ " ${targets[*]} " == *" $1 "* ]] || targets+=("$1"); }
for arg in "$@"; do
    case $arg in
    cluster) for t in "${cluster_targets[@]}"; do want "$t"; done ;;
    kube-proxy | kubelet | kube-controller-manager | kube-scheduler | kubectl | agnhost | \
        regression-issue-74839 | e2e.test) want "$arg" ;;
    *)
        echo "usage: build.sh [cluster | kube-proxy | kubelet | ... | e2e.test]" >&2
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
        printf '%-24s %s\n' "$t:" "$dest/$t"
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
    local cmd=(build)
    # The e2e suite is a test binary: it is compiled, not built.
    [[ $out == e2e.test ]] && cmd=(test -c)
    (cd "$here" && nice -n 10 go "${cmd[@]}" -trimpath -ldflags="$ldflags" -o "$tmp" "$pkg") || {
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
    [kubelet]=k8s.io/kubernetes/cmd/kubelet
    [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
    [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
    [kubectl]=k8s.io/kubernetes/cmd/kubectl
    [agnhost]=k8s.io/kubernetes/test/images/agnhost
    [regression-issue-74839]=k8s.io/kubernetes/test/images/regression-issue-74839
    [e2e.test]=./e2e
)
for t in "${targets[@]}"; do
    build "$t" "${package[$t]}"
done
echo "build.sh: built in $((SECONDS - start))s" >&2
report
