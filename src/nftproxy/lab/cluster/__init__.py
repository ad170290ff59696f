"""A real Kubernetes cluster on one machine, with nftproxy (or kube-proxy) as its proxy.

`config` describes it as data, `pki` makes its certificates and tokens, `images` the
container images its pods run, `cluster` brings it up and down, `e2e` judges it with
Kubernetes' own e2e tests and `command` is `nftproxy cluster ...`. The binaries come from
hack/cluster/build.sh.
"""

__all__: list[str] = []
