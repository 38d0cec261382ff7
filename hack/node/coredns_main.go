// CoreDNS with only the plugins that the local node's Corefile uses (see hack/node.sh).
//
// hack/node-binaries.sh builds this instead of CoreDNS's own main package, which links
// every plugin, the AWS, Azure and Google Cloud SDKs among them: on a 2-core machine that
// build took 18 minutes, this one a fraction of it. The directive order stays CoreDNS's own
// (core/dnsserver), so a Corefile means the same here as in any CoreDNS.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
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
