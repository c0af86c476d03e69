package main

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// ContainerName is the container that runs `lksup run`.
const ContainerName = "lksup"

// Build is one kustomization, built and decoded.
type Build struct {
	Dir     string
	YAML    []byte           // the build's output, as `kustomize build` prints it
	Objects []runtime.Object // every object, decoded strictly into its k8s.io/api type
}

var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		appsv1.AddToScheme, corev1.AddToScheme, policyv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	// Strict, as the API server's strict field validation: unknown fields, duplicate fields
	// and fields spelled with the wrong case are errors. Kinds outside the scheme are errors.
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// BuildDir runs kustomize (krusty, in this process) on dir and decodes every object.
func BuildDir(fsys filesys.FileSystem, dir string) (*Build, error) {
	options := krusty.MakeDefaultOptions()
	options.Reorder = krusty.ReorderOptionLegacy // the order `kubectl kustomize` prints
	resources, err := krusty.MakeKustomizer(options).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: kustomize build: %w", dir, err)
	}
	out, err := resources.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	build := &Build{Dir: dir, YAML: out}
	var problems []string
	for _, res := range resources.Resources() {
		data, err := res.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", dir, res.CurId(), err)
		}
		obj, _, err := decoder.Decode(data, nil, nil)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", res.CurId(), err))
			continue
		}
		build.Objects = append(build.Objects, obj)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s: objects that do not decode strictly:\n  %s",
			dir, strings.Join(problems, "\n  "))
	}
	return build, nil
}

// Check returns every problem found in a build (none: the manifests pass).
func Check(b *Build) []string {
	c := &checker{}
	var deployments []*appsv1.Deployment
	configMaps := map[string]*corev1.ConfigMap{}
	var services []*corev1.Service
	var budgets []*policyv1.PodDisruptionBudget
	for _, obj := range b.Objects {
		switch o := obj.(type) {
		case *appsv1.Deployment:
			deployments = append(deployments, o)
		case *corev1.ConfigMap:
			configMaps[o.Name] = o
		case *corev1.Service:
			services = append(services, o)
		case *policyv1.PodDisruptionBudget:
			budgets = append(budgets, o)
		case *corev1.Secret:
			c.add("Secret %s: secrets are never part of the manifests; reference existing ones", o.Name)
		}
	}
	if len(deployments) != 1 {
		c.add("want exactly one Deployment, found %d", len(deployments))
		return c.problems
	}
	d := deployments[0]
	pod := labels.Set(d.Spec.Template.Labels)
	c.deployment(d, configMaps)
	if len(services) == 0 {
		c.add("no Service for the metrics")
	}
	for _, s := range services {
		c.service(s, d, pod)
	}
	if len(budgets) != 1 {
		c.add("want exactly one PodDisruptionBudget, found %d", len(budgets))
	}
	for _, pdb := range budgets {
		c.selects("PodDisruptionBudget "+pdb.Name, pdb.Spec.Selector, pod)
	}
	return c.problems
}

type checker struct{ problems []string }

func (c *checker) add(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

// selects: a non-empty selector that matches the pod template's labels.
func (c *checker) selects(what string, selector *metav1.LabelSelector, pod labels.Set) {
	if selector == nil || (len(selector.MatchLabels) == 0 && len(selector.MatchExpressions) == 0) {
		c.add("%s: no selector (an empty one selects every pod of the namespace)", what)
		return
	}
	s, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		c.add("%s: selector: %v", what, err)
	} else if !s.Matches(pod) {
		c.add("%s: selector %s does not match the pod template's labels %s", what, s, pod)
	}
}

// runArgs is what the container's `lksup run` arguments say.
type runArgs struct {
	fleet, http, socket, stateDir string
}

func parseRunArgs(args []string) (runArgs, error) {
	var r runArgs
	if len(args) == 0 || args[0] != "run" {
		return r, fmt.Errorf("args must start with `run` (the image's entrypoint is lksup), got %q", args)
	}
	options := map[string]*string{"--http": &r.http, "--socket": &r.socket, "--state-dir": &r.stateDir}
	for i := 1; i < len(args); i++ {
		arg := args[i]
		if !strings.HasPrefix(arg, "-") {
			if r.fleet != "" {
				return r, fmt.Errorf("two fleet files in args: %q and %q", r.fleet, arg)
			}
			r.fleet = arg
			continue
		}
		name, value, hasValue := strings.Cut(arg, "=")
		target, known := options[name]
		if !known {
			continue // other options (--log-format...) are lksup's to check
		}
		if !hasValue {
			if i+1 >= len(args) {
				return r, fmt.Errorf("%s has no value", name)
			}
			i++
			value = args[i]
		}
		*target = value
	}
	return r, nil
}

var secretName = regexp.MustCompile(`(?i)(secret|token|password|passwd|api_?key|credential|private)`)

func (c *checker) deployment(d *appsv1.Deployment, configMaps map[string]*corev1.ConfigMap) {
	what := "Deployment " + d.Name
	spec := d.Spec.Template.Spec
	c.selects(what, d.Spec.Selector, labels.Set(d.Spec.Template.Labels))

	// Rolling updates that never take a pod away before its replacement is ready.
	strategy := d.Spec.Strategy
	if strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || strategy.RollingUpdate == nil {
		c.add("%s: strategy must be RollingUpdate with rollingUpdate set", what)
	} else if mu := strategy.RollingUpdate.MaxUnavailable; mu == nil || !isZero(*mu) {
		c.add("%s: rollingUpdate.maxUnavailable must be 0, got %v", what, mu)
	}
	if spec.TerminationGracePeriodSeconds == nil {
		c.add("%s: terminationGracePeriodSeconds must be set from the fleet's stop budget", what)
	}

	var container *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == ContainerName {
			container = &spec.Containers[i]
		}
	}
	if container == nil {
		c.add("%s: no container named %q", what, ContainerName)
		return
	}
	what += " container " + ContainerName
	c.nonRoot(what, spec.SecurityContext, container.SecurityContext)
	if container.Image == "" || strings.HasSuffix(container.Image, ":latest") ||
		!strings.ContainsAny(path.Base(container.Image), ":@") {
		c.add("%s: image %q must name a tag or digest other than latest", what, container.Image)
	}

	run, err := parseRunArgs(container.Args)
	if err != nil {
		c.add("%s: %v", what, err)
		return
	}
	c.probes(what, container, run.http)
	c.secrets(what, container)

	mounts := c.mounts(what, spec, container)
	if run.fleet == "" || !path.IsAbs(run.fleet) {
		c.add("%s: `lksup run` needs an absolute fleet file path, got %q", what, run.fleet)
	} else {
		c.fleetMount(what, run.fleet, mounts, configMaps)
	}
	for _, dir := range []struct{ flag, dir string }{
		{"--socket", path.Dir(run.socket)},
		{"--state-dir", run.stateDir},
	} {
		if dir.dir == "." || dir.dir == "" || !path.IsAbs(dir.dir) {
			c.add("%s: %s must be given as an absolute path", what, dir.flag)
			continue
		}
		c.ownDirectory(what, dir.flag, dir.dir, mounts)
	}
	for _, env := range container.Env {
		if env.Name == "LKSUP_SOCKET" && env.Value != run.socket {
			c.add("%s: LKSUP_SOCKET %q differs from --socket %q", what, env.Value, run.socket)
		}
	}
}

func isZero(v intstr.IntOrString) bool {
	if v.Type == intstr.Int {
		return v.IntVal == 0
	}
	return v.StrVal == "0" || v.StrVal == "0%"
}

func (c *checker) nonRoot(what string, pod *corev1.PodSecurityContext, ctr *corev1.SecurityContext) {
	nonRoot, uid := false, int64(-1)
	if pod != nil {
		nonRoot = pod.RunAsNonRoot != nil && *pod.RunAsNonRoot
		if pod.RunAsUser != nil {
			uid = *pod.RunAsUser
		}
	}
	if ctr != nil && ctr.RunAsNonRoot != nil {
		nonRoot = *ctr.RunAsNonRoot
	}
	if ctr != nil && ctr.RunAsUser != nil {
		uid = *ctr.RunAsUser
	}
	if !nonRoot {
		c.add("%s: runAsNonRoot must be true (pod or container securityContext)", what)
	}
	if uid == 0 {
		c.add("%s: runAsUser must not be 0", what)
	}
	if ctr == nil || ctr.AllowPrivilegeEscalation == nil || *ctr.AllowPrivilegeEscalation {
		c.add("%s: securityContext.allowPrivilegeEscalation must be false", what)
	}
	if ctr == nil || ctr.Capabilities == nil || !hasCapability(ctr.Capabilities.Drop, "ALL") {
		c.add("%s: securityContext.capabilities.drop must include ALL", what)
	}
}

func hasCapability(list []corev1.Capability, name corev1.Capability) bool {
	for _, c := range list {
		if c == name {
			return true
		}
	}
	return false
}

// probes: readiness on /readyz and liveness on /livez, on the port lksup listens on (--http),
// which must be reachable from the kubelet (not loopback).
func (c *checker) probes(what string, ctr *corev1.Container, http string) {
	i := strings.LastIndex(http, ":")
	if i < 0 {
		c.add("%s: args must give --http HOST:PORT for the probes, got %q", what, http)
		return
	}
	host := http[:i]
	port, err := strconv.Atoi(http[i+1:])
	if err != nil {
		c.add("%s: args must give --http HOST:PORT for the probes, got %q", what, http)
		return
	}
	if host != "0.0.0.0" && host != "[::]" && host != "::" {
		c.add("%s: --http %s is not reachable from the kubelet; listen on 0.0.0.0", what, http)
	}
	for _, p := range []struct {
		name, path string
		probe      *corev1.Probe
	}{
		{"readinessProbe", "/readyz", ctr.ReadinessProbe},
		{"livenessProbe", "/livez", ctr.LivenessProbe},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			c.add("%s: %s must be an httpGet on %s", what, p.name, p.path)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			c.add("%s: %s path must be %s, got %q", what, p.name, p.path, p.probe.HTTPGet.Path)
		}
		if got, ok := containerPort(ctr, p.probe.HTTPGet.Port); !ok || got != int32(port) {
			c.add("%s: %s port %s is not the --http port %d", what, p.name,
				p.probe.HTTPGet.Port.String(), port)
		}
	}
	if ctr.StartupProbe != nil && ctr.StartupProbe.HTTPGet != nil &&
		ctr.StartupProbe.HTTPGet.Path == "/readyz" {
		c.add("%s: startupProbe on /readyz would restart a pod whose server is unreachable", what)
	}
}

// containerPort resolves a probe's or a Service's target port against the container's ports.
func containerPort(ctr *corev1.Container, port intstr.IntOrString) (int32, bool) {
	for _, p := range ctr.Ports {
		if port.Type == intstr.String && p.Name == port.StrVal ||
			port.Type == intstr.Int && p.ContainerPort == port.IntVal {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// secrets: the LiveKit credentials come from Secrets, and no variable that looks like a
// secret is written in the manifest.
func (c *checker) secrets(what string, ctr *corev1.Container) {
	for _, name := range []string{"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} {
		found := false
		for _, env := range ctr.Env {
			if env.Name == name {
				found = true
				if env.ValueFrom == nil || env.ValueFrom.SecretKeyRef == nil {
					c.add("%s: %s must come from a secretKeyRef", what, name)
				}
			}
		}
		if !found {
			c.add("%s: %s is not set (from a secretKeyRef)", what, name)
		}
	}
	for _, env := range ctr.Env {
		if env.Value != "" && secretName.MatchString(env.Name) {
			c.add("%s: env %s has a literal value; take it from a Secret", what, env.Name)
		}
	}
}

// mounts: every volumeMount names a volume of the pod; the mounts by path.
func (c *checker) mounts(what string, spec corev1.PodSpec, ctr *corev1.Container) map[string]mount {
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]mount{}
	for _, m := range ctr.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			c.add("%s: volumeMount %s names no volume of the pod", what, m.Name)
			continue
		}
		mounts[path.Clean(m.MountPath)] = mount{VolumeMount: m, volume: v}
	}
	return mounts
}

type mount struct {
	corev1.VolumeMount
	volume corev1.Volume
}

// fleetMount: the fleet file's directory is a ConfigMap of the build mounted as a directory
// (no subPath, no items), so the kubelet's ..data symlink swap reaches it.
func (c *checker) fleetMount(what, fleet string, mounts map[string]mount,
	configMaps map[string]*corev1.ConfigMap) {
	dir, key := path.Dir(fleet), path.Base(fleet)
	m, ok := mounts[dir]
	if !ok || m.volume.ConfigMap == nil {
		c.add("%s: the fleet file's directory %s must be a ConfigMap volume's mountPath", what, dir)
		return
	}
	if m.SubPath != "" || m.SubPathExpr != "" {
		c.add("%s: the fleet ConfigMap is mounted with subPath, which never sees updates", what)
	}
	if !m.ReadOnly {
		c.add("%s: the fleet ConfigMap mount must be readOnly", what)
	}
	if len(m.volume.ConfigMap.Items) > 0 {
		c.add("%s: the fleet ConfigMap volume must not select items", what)
	}
	cm, ok := configMaps[m.volume.ConfigMap.Name]
	if !ok {
		c.add("%s: ConfigMap %s (the fleet) is not in the build", what, m.volume.ConfigMap.Name)
		return
	}
	if _, ok := cm.Data[key]; !ok {
		c.add("%s: ConfigMap %s has no key %s (keys: %s)", what, cm.Name, key, keys(cm.Data))
	}
}

func keys(m map[string]string) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// ownDirectory: lksup creates dir itself (0700, its own user), so dir must lie strictly below
// a writable emptyDir mount: a mount point itself is root-owned and world-writable, which lksup
// refuses for its socket and cannot chmod as its state directory.
func (c *checker) ownDirectory(what, flag, dir string, mounts map[string]mount) {
	dir = path.Clean(dir)
	if _, isMount := mounts[dir]; isMount {
		c.add("%s: %s directory %s is a mount point; mount its parent and let lksup create it",
			what, flag, dir)
		return
	}
	best := ""
	for mp := range mounts {
		if strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/") && len(mp) > len(best) {
			best = mp
		}
	}
	if best == "" {
		c.add("%s: %s directory %s is on the container's root filesystem; put it below an "+
			"emptyDir mount", what, flag, dir)
		return
	}
	if m := mounts[best]; m.volume.EmptyDir == nil || m.ReadOnly {
		c.add("%s: %s directory %s must be below a writable emptyDir, not volume %s",
			what, flag, dir, m.Name)
	}
}

// service: it selects the pods and targets a port of the lksup container.
func (c *checker) service(s *corev1.Service, d *appsv1.Deployment, pod labels.Set) {
	what := "Service " + s.Name
	if len(s.Spec.Selector) == 0 {
		c.add("%s: no selector", what)
	} else if !labels.SelectorFromSet(s.Spec.Selector).Matches(pod) {
		c.add("%s: selector %v does not match the pod template's labels %s", what,
			s.Spec.Selector, pod)
	}
	var ctr *corev1.Container
	for i := range d.Spec.Template.Spec.Containers {
		if d.Spec.Template.Spec.Containers[i].Name == ContainerName {
			ctr = &d.Spec.Template.Spec.Containers[i]
		}
	}
	if ctr == nil {
		return
	}
	for _, p := range s.Spec.Ports {
		target := p.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(p.Port)
		}
		if _, ok := containerPort(ctr, target); !ok {
			c.add("%s: port %s targets %s, which the lksup container does not expose", what,
				p.Name, target.String())
		}
	}
}
