// Command coredns is upstream CoreDNS's entry point (coremain) with only the plugins that
// hack/cluster's Corefile names, instead of upstream's full list of every plugin (cloud
// back ends, dnstap, tracing, ...): a much shorter build. A plugin registers itself with
// CoreDNS when its package is imported; the order in which the server runs them is
// CoreDNS's own directive list, whichever of them are linked.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() { coremain.Run() }
