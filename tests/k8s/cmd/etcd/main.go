// etcd for the test harness, at the version k8s.io/kubernetes itself depends on,
// so the API server talks to the etcd it was released with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
