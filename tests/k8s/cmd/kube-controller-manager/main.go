// kube-controller-manager for the test harness: the upstream command, unchanged.
// It runs the real Job controller, which turns worker Jobs into Pods.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
