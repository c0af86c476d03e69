// Command validate-deploy checks lksup's Kubernetes manifests without a cluster.
//
// For each kustomization directory it runs a kustomize build in this process (krusty),
// decodes every object strictly into its k8s.io/api type (unknown, duplicate or miscased
// fields are errors, as under the API server's strict field validation), and checks what lksup
// needs of its pod: probes on /readyz and /livez at the --http port, rolling updates with
// maxUnavailable 0, a non-root security context, LiveKit credentials from Secrets, the fleet
// ConfigMap mounted as a directory, and socket and state directories lksup can create itself.
// The stop budget (terminationGracePeriodSeconds against the fleet's timeouts) is checked by
// tests/deploy with lksup's own fleet loader, from the builds written with -o.
//
// Usage:
//
//	validate-deploy [-o DIR] KUSTOMIZATION...
//
// With -o, each build is written to DIR/<base name of KUSTOMIZATION>.yaml.
// Exit status: 0 every build passes, 1 a build fails or has problems, 2 usage error.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	out := flag.String("o", "", "write each build to `DIR`/<base name>.yaml")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(),
			"usage: %s [-o DIR] KUSTOMIZATION...\n", filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	written := map[string]string{}
	status := 0
	for _, dir := range flag.Args() {
		build, err := BuildDir(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			status = 1
			continue
		}
		problems := Check(build)
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "%s: %s\n", dir, p)
		}
		if len(problems) > 0 {
			status = 1
		} else {
			fmt.Printf("%s: %d objects, ok\n", dir, len(build.Objects))
		}
		if *out == "" {
			continue
		}
		name := filepath.Base(filepath.Clean(dir)) + ".yaml"
		if other, taken := written[name]; taken {
			fmt.Fprintf(os.Stderr, "%s and %s would both be written to %s\n", other, dir, name)
			os.Exit(2)
		}
		written[name] = dir
		if err := os.WriteFile(filepath.Join(*out, name), build.YAML, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	os.Exit(status)
}
