// CoreDNS with only the plugins the local cluster's DNS needs (written by hand; go.mod by controlplane/gomod.py).
//
// Upstream's main package blank-imports core/plugin, which pulls in every plugin (about twice the build time and
// binary size). A plugin's order in a request is not the Corefile's but the compiled-in directives list
// (core/dnsserver/zdirectives.go, generated from upstream's plugin.cfg); SetDirectives replaces it with these
// nine, in upstream's relative order, so a directive this build lacks is refused at start-up instead of ignored.
package main

import (
	"log"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// directives: upstream's order (plugin.cfg) restricted to the plugins imported above.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"template",
	"kubernetes",
	"forward",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		log.Fatal(err)
	}
	coremain.Run()
}
