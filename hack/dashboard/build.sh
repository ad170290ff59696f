#!/usr/bin/env bash
# Build what the app dashboard runs and its tests need, from the Go module proxy:
# the helm CLI (v4), stamped with its version so that `helm version` is right.
#
#     hack/dashboard/build.sh        # build what is missing, print where it is
#
# Binaries land in ${NFTPROXY_DASHBOARD_CACHE:-$HOME/.cache/nftproxy/dashboard}/bin,
# each next to a stamp naming the module version it came from; changing the pin
# below rebuilds it. A cold build takes about 2.5 minutes on 2 cores.
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

start=$SECONDS
if [[ ! -x $bin/helm || $(cat "$bin/.helm.version" 2>/dev/null) != "$helm_module@$helm_version" ]]; then
    tmp=$(mktemp -d "$cache/.gobin.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "build.sh: building $helm_module/cmd/helm@$helm_version" >&2
    # helm reads its version from these variables; `go install` leaves them at
    # the source's placeholder unless they are set here.
    ldflags="-s -w -X $helm_module/internal/version.version=$helm_version"
    ldflags+=" -X $helm_module/internal/version.gitTreeState=clean"
    env GOBIN="$tmp" CGO_ENABLED=0 nice -n 10 \
        go install -trimpath -ldflags="$ldflags" "$helm_module/cmd/helm@$helm_version"
    mv -f "$tmp/helm" "$bin/helm"
    echo "$helm_module@$helm_version" >"$bin/.helm.version"
fi
printf '%-8s %s\n' "helm:" "$bin/helm"
echo "build.sh: ready in $((SECONDS - start))s: $bin" >&2
