//go:build tools

// Package tools records the commands this module builds so that `go mod tidy`
// keeps their dependencies. It is never compiled. Only etcd and kube-apiserver
// are built by default (for tests/kube); the rest on request: kube-proxy for
// the comparison benchmark, the node and control-plane commands, agnhost and
// the e2e suite (./e2e) for the cluster in hack/cluster.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/images/agnhost"
	_ "k8s.io/kubernetes/test/images/regression-issue-74839"
)
