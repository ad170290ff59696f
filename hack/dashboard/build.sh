#!/usr/bin/env bash
# Build what the app dashboard runs and its tests need, from the Go module proxy:
# the helm CLI (v4), stamped with its version so that `helm version` is right, and
# go-containerregistry's registry server, an OCI registry the tests push charts to.
#
#     hack/dashboard/build.sh        # build what is missing, print where it is
#
# Binaries land in ${NFTPROXY_DASHBOARD_CACHE:-$HOME/.cache/nftproxy/dashboard}/bin,
# each next to a stamp naming the module version it came from; changing a pin below
# rebuilds that binary. A cold build takes about 2.5 minutes (helm) and 1 minute
# (registry) on 2 cores.
set -euo pipefail

cache=${NFTPROXY_DASHBOARD_CACHE:-$HOME/.cache/nftproxy/dashboard}
bin=$cache/bin
mkdir -p "$bin"
exec 9>"$cache/.lock"
flock 9

command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="${GOFLAGS:--p=2}"

helm_module=helm.sh/helm/v4
helm_version=v4.3.2
registry_module=github.com/google/go-containerregistry
registry_version=v0.22.1

tmp=$(mktemp -d "$cache/.gobin.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# stale NAME STAMP: whether $bin/NAME is missing or was built from another pin.
stale() {
    [[ ! -x $bin/$1 || $(cat "$bin/.$1.version" 2>/dev/null) != "$2" ]]
}

# build NAME STAMP PACKAGE [go install flags...]: install PACKAGE as $bin/NAME, then stamp it.
build() {
    local name=$1 stamp=$2 package=$3
    shift 3
    echo "build.sh: building $package" >&2
    env GOBIN="$tmp" CGO_ENABLED=0 nice -n 10 go install -trimpath "$@" "$package"
    mv -f "$tmp/$(basename "${package%@*}")" "$bin/$name"
    echo "$stamp" >"$bin/.$name.version"
}

start=$SECONDS
if stale helm "$helm_module@$helm_version"; then
    # helm reads its version from these variables; `go install` leaves them at
    # the source's placeholder unless they are set here.
    ldflags="-s -w -X $helm_module/internal/version.version=$helm_version"
    ldflags+=" -X $helm_module/internal/version.gitTreeState=clean"
    build helm "$helm_module@$helm_version" "$helm_module/cmd/helm@$helm_version" \
        -ldflags="$ldflags"
fi
if stale registry "$registry_module@$registry_version"; then
    build registry "$registry_module@$registry_version" \
        "$registry_module/cmd/registry@$registry_version" -ldflags="-s -w"
fi
printf '%-10s %s\n' "helm:" "$bin/helm" "registry:" "$bin/registry"
echo "build.sh: ready in $((SECONDS - start))s: $bin" >&2
