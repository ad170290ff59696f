#!/usr/bin/env bash
# Build everything the local cluster (nftproxy cluster up) and its e2e run need,
# from source, at pinned versions. Nothing is pulled from an image registry.
#
#     hack/cluster/build.sh          # build what is missing, print where it is
#
# - Kubernetes' own commands, agnhost and e2e.test: hack/k8s/build.sh cluster
# - the runtime and network below: `go install module/cmd@version`, so each is
#   built against exactly the dependencies its own go.mod pins
# - pause: kubernetes' build/pause/linux/pause.c, linked statically
#
# Binaries land in ${NFTPROXY_CLUSTER_CACHE:-$HOME/.cache/nftproxy/cluster}/bin,
# each next to a stamp naming the module version it came from; changing a pin
# below rebuilds just that command. Images are assembled from these binaries by
# `nftproxy cluster up` (src/nftproxy/lab/cluster/images.py).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${NFTPROXY_CLUSTER_CACHE:-$HOME/.cache/nftproxy/cluster}
bin=$cache/bin
mkdir -p "$bin"
exec 9>"$cache/.lock"
flock 9

command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="${GOFLAGS:--p=2}"

# name            module@version                                   package under the module
pins=(
    "containerd             github.com/containerd/containerd/v2@v2.2.9  cmd/containerd"
    "containerd-shim-runc-v2 github.com/containerd/containerd/v2@v2.2.9 cmd/containerd-shim-runc-v2"
    "ctr                    github.com/containerd/containerd/v2@v2.2.9  cmd/ctr"
    "runc                   github.com/opencontainers/runc@v1.5.3       ."
    "bridge                 github.com/containernetworking/plugins@v1.9.0 plugins/main/bridge"
    "loopback               github.com/containernetworking/plugins@v1.9.0 plugins/main/loopback"
    "host-local             github.com/containernetworking/plugins@v1.9.0 plugins/ipam/host-local"
    "portmap                github.com/containernetworking/plugins@v1.9.0 plugins/meta/portmap"
    "crictl                 sigs.k8s.io/cri-tools@v1.37.0               cmd/crictl"
    "coredns                github.com/coredns/coredns@v1.15.0          ."
    # The ginkgo CLI at the version k8s.io/kubernetes v1.36.3 itself requires,
    # so that it drives e2e.test without a version-mismatch warning.
    "ginkgo                 github.com/onsi/ginkgo/v2@v2.28.1           ginkgo"
)

start=$SECONDS
"$here/../k8s/build.sh" cluster >/dev/null

install_one() { # <name> <module@version> <package>
    local name=$1 modver=$2 pkg=$3 module version path tmp
    module=${modver%@*}
    version=${modver#*@}
    [[ -x $bin/$name && $(cat "$bin/.$name.version" 2>/dev/null) == "$modver" ]] && return 0
    path=$module
    [[ $pkg != . ]] && path=$module/$pkg
    tmp=$(mktemp -d "$cache/.gobin.XXXXXX")
    echo "build.sh: building $path@$version" >&2
    local env=(CGO_ENABLED=0)
    local flags=(-trimpath -ldflags=-s\ -w)
    if [[ $name == runc ]]; then
        # runc needs cgo for libseccomp and nsenter.
        env=(CGO_ENABLED=1)
        flags+=(-tags=seccomp)
    fi
    if ! env GOBIN="$tmp" "${env[@]}" nice -n 10 go install "${flags[@]}" "$path@$version"; then
        rm -rf "$tmp"
        return 1
    fi
    mv -f "$tmp/$(basename "$path")" "$bin/$name"
    rm -rf "$tmp"
    echo "$modver" >"$bin/.$name.version"
}

for pin in "${pins[@]}"; do
    [[ $pin == \#* ]] && continue
    # shellcheck disable=SC2086
    install_one $pin
done

# pause: the C source is part of the kubernetes module hack/k8s already uses; the
# version it reports is the tag the e2e suite asks for (registry.k8s.io/pause).
# The same module has the key pair `agnhost porter` serves TLS with in its image.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/../k8s/go.mod")
if [[ $(cat "$bin/.pause.version" 2>/dev/null) != "k8s.io/kubernetes@$k8s_version" ]]; then
    src=$(cd "$here/../k8s" && go mod download -json "k8s.io/kubernetes@$k8s_version" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    gcc -Os -static -Wall -Werror -o "$bin/.pause.tmp" \
        -DVERSION="v3.10.2" "$src/build/pause/linux/pause.c"
    strip "$bin/.pause.tmp"
    mv -f "$bin/.pause.tmp" "$bin/pause"
    mkdir -p "$bin/agnhost-porter"
    cp "$src/test/images/agnhost/porter/localhost.crt" \
        "$src/test/images/agnhost/porter/localhost.key" "$bin/agnhost-porter/"
    echo "k8s.io/kubernetes@$k8s_version" >"$bin/.pause.version"
fi

# Kubernetes' own commands sit in hack/k8s's cache; link them in so one
# directory holds the whole cluster.
while read -r name path; do
    ln -sfn "$path" "$bin/${name%:}"
done < <("$here/../k8s/build.sh" cluster)

echo "build.sh: ready in $((SECONDS - start))s: $bin" >&2
