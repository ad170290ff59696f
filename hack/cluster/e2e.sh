#!/usr/bin/env bash
# Kubernetes' e2e network specs against the local cluster, once with nftproxy and once
# with upstream kube-proxy (nftables mode), side by side; the table goes to
# docs/conformance.md.
#
#     hack/cluster/e2e.sh                 # the broad sig-network set (~20 min per proxy)
#     hack/cluster/e2e.sh conformance     # only the Services [Conformance] specs
#
# As root. NODES (default 3: the topology specs want three zones, and the cluster puts
# each node in a zone of its own) sets the cluster's size.
#
# Each proxy gets a fresh cluster (`nftproxy cluster up --proxy ...`), brought down
# afterwards even when the run fails. Results: $OUT/<proxy>/{junit.xml,results.json,ginkgo.log}.
set -euo pipefail
cd "$(dirname "$0")/../.."

suite=${1:-network}
out=${OUT:-$PWD/.e2e/$suite}
# A name of this run's own: never an existing cluster's.
name=${CLUSTER_NAME:-e2e$((RANDOM % 100000))}
py=${PYTHON:-.venv/bin/python}
nftproxy=("$py" -m nftproxy)

hack/cluster/build.sh

up=
cleanup() { [[ -z $up ]] || "${nftproxy[@]}" cluster down --name "$name" || true; }
trap cleanup EXIT

for proxy in nftproxy kube-proxy; do
    rc=0
    "${nftproxy[@]}" cluster status --name "$name" >/dev/null 2>&1 || rc=$?
    if ((rc != 3)); then # 3: no such cluster
        echo "e2e.sh: a cluster named $name exists already; set CLUSTER_NAME" >&2
        exit 1
    fi
    start=$SECONDS
    up=yes # from here on the cluster is this run's (a failed up is cleaned up too)
    "${nftproxy[@]}" cluster up --name "$name" --proxy "$proxy" --nodes "${NODES:-3}"
    echo "e2e.sh: cluster up with $proxy in $((SECONDS - start)) s" >&2
    start=$SECONDS
    "${nftproxy[@]}" cluster e2e --name "$name" --suite "$suite" --out "$out/$proxy" || true
    echo "e2e.sh: $suite with $proxy in $((SECONDS - start)) s" >&2
    start=$SECONDS
    "${nftproxy[@]}" cluster down --name "$name"
    up=
    echo "e2e.sh: cluster down in $((SECONDS - start)) s" >&2
done

"$py" -m nftproxy.lab.cluster.e2e "$out/nftproxy/results.json" "$out/kube-proxy/results.json" \
    >"$out/table.md"
echo "e2e.sh: side-by-side table in $out/table.md" >&2
