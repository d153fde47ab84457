// kube-scheduler for the real-node test tier: the upstream command, unchanged
// (k8s.io/kubernetes/cmd/kube-scheduler/scheduler.go). The control plane of the
// simulated tier has no scheduler (nothing would run what it places); with a real
// node, Jobs' pods need one.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metric registration
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric registration
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}
