// The pod sandbox ("pause") image for DCloud's test node: the process that holds a pod's
// namespaces open. No image registry is reachable where the tests run, so this stands in
// for registry.k8s.io/pause. It waits for SIGTERM or SIGINT (what containerd sends to stop
// a sandbox) and exits 0; it must be built static (CGO_ENABLED=0) to run in an empty image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
