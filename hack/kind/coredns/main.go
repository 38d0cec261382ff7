// CoreDNS for the kind node image, linking only the plugins of the Corefile that kubeadm 1.34
// writes (errors, health, ready, kubernetes, prometheus, forward, cache, loop, reload,
// loadbalance): CoreDNS's own main links every plugin and its cloud SDKs, a long build here.
// Importing a plugin registers it; CoreDNS's directive order decides the chain, as upstream.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
