package main

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// The kustomizations of the repository, relative to this module.
var repository = []string{"../kubernetes/base", "../kubernetes/overlays/example"}

func TestRepositoryManifestsPass(t *testing.T) {
	for _, dir := range repository {
		build, err := BuildDir(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Fatal(err)
		}
		if problems := Check(build); len(problems) > 0 {
			t.Errorf("%s:\n  %s", dir, strings.Join(problems, "\n  "))
		}
	}
}

func TestOverlayOverridesImageReplicasAndFleet(t *testing.T) {
	base := deploymentOf(t, mustBuild(t, repository[0]))
	overlay := mustBuild(t, repository[1])
	d := deploymentOf(t, overlay)
	if d.Namespace != "voice-agents" || *d.Spec.Replicas != 2 {
		t.Errorf("namespace %q replicas %d", d.Namespace, *d.Spec.Replicas)
	}
	if got := d.Spec.Template.Spec.Containers[0].Image; !strings.HasPrefix(got, "registry.example.com/") {
		t.Errorf("image %q", got)
	}
	fleetOf := func(d *appsv1.Deployment) string {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil {
				return v.ConfigMap.Name
			}
		}
		return ""
	}
	if fleetOf(d) == fleetOf(base) { // the content hash in the name changed with the file
		t.Errorf("the overlay mounts the base's fleet ConfigMap %s", fleetOf(d))
	}
	for _, obj := range overlay.Objects {
		if cm, ok := obj.(*corev1.ConfigMap); ok && !strings.Contains(cm.Data["fleet.yaml"], "example-prod") {
			t.Errorf("ConfigMap %s does not hold the overlay's fleet", cm.Name)
		}
	}
}

// A kustomization in memory with one Deployment, for the strict decoding tests.
func buildInMemory(t *testing.T, deployment string) error {
	t.Helper()
	fs := filesys.MakeFsInMemory()
	if err := fs.WriteFile("/k/kustomization.yaml", []byte("resources: [deployment.yaml]\n")); err != nil {
		t.Fatal(err)
	}
	if err := fs.WriteFile("/k/deployment.yaml", []byte(deployment)); err != nil {
		t.Fatal(err)
	}
	_, err := BuildDir(fs, "/k")
	return err
}

const minimal = `apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: lksup
          image: lksup:1
`

func TestStrictDecoding(t *testing.T) {
	if err := buildInMemory(t, minimal); err != nil {
		t.Fatalf("the minimal Deployment should decode: %v", err)
	}
	cases := map[string]struct{ from, to, want string }{
		"unknown field": {
			"image: lksup:1", "image: lksup:1\n          livenesProbe: {}", `unknown field "spec.template.spec.containers[0].livenesProbe"`},
		"field with the wrong case": {
			"selector:", "Selector:", `unknown field "spec.Selector"`},
		"wrong type": {
			"image: lksup:1", "image: lksup:1\n          ports: [{containerPort: http}]", "containerPort"},
		"invalid quantity": {
			"image: lksup:1", "image: lksup:1\n          resources: {limits: {memory: 2GB}}", "quantities must match"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := buildInMemory(t, strings.Replace(minimal, tc.from, tc.to, 1))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
		})
	}
}

func TestUnknownKindIsAnError(t *testing.T) {
	err := buildInMemory(t, minimal+"---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
	if err == nil || !strings.Contains(err.Error(), "Widget") {
		t.Fatalf("want an error naming the kind, got %v", err)
	}
}

func mustBuild(t *testing.T, dir string) *Build {
	t.Helper()
	build, err := BuildDir(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return build
}

func deploymentOf(t *testing.T, b *Build) *appsv1.Deployment {
	t.Helper()
	for _, obj := range b.Objects {
		if d, ok := obj.(*appsv1.Deployment); ok {
			return d
		}
	}
	t.Fatal("no Deployment")
	return nil
}

func TestCheckFindsEachProblem(t *testing.T) {
	ctr := func(d *appsv1.Deployment) *corev1.Container { return &d.Spec.Template.Spec.Containers[0] }
	mount := func(d *appsv1.Deployment, name string) *corev1.VolumeMount {
		for i, m := range ctr(d).VolumeMounts {
			if m.Name == name {
				return &ctr(d).VolumeMounts[i]
			}
		}
		t.Fatalf("no mount %s", name)
		return nil
	}
	setArg := func(d *appsv1.Deployment, prefix, value string) {
		for i, a := range ctr(d).Args {
			if strings.HasPrefix(a, prefix) {
				ctr(d).Args[i] = prefix + value
			}
		}
	}
	cases := map[string]struct {
		change func(*appsv1.Deployment)
		want   string
	}{
		"maxUnavailable 1": {func(d *appsv1.Deployment) {
			one := intstr.FromInt32(1)
			d.Spec.Strategy.RollingUpdate.MaxUnavailable = &one
		}, "maxUnavailable must be 0"},
		"readiness on /livez": {func(d *appsv1.Deployment) {
			ctr(d).ReadinessProbe.HTTPGet.Path = "/livez"
		}, "readinessProbe path must be /readyz"},
		"no liveness probe": {func(d *appsv1.Deployment) {
			ctr(d).LivenessProbe = nil
		}, "livenessProbe must be an httpGet on /livez"},
		"probe on another port": {func(d *appsv1.Deployment) {
			ctr(d).LivenessProbe.HTTPGet.Port = intstr.FromInt32(9000)
		}, "livenessProbe port 9000 is not the --http port"},
		"listener on loopback": {func(d *appsv1.Deployment) {
			setArg(d, "--http=", "127.0.0.1:8081")
		}, "not reachable from the kubelet"},
		"root allowed": {func(d *appsv1.Deployment) {
			no := false
			d.Spec.Template.Spec.SecurityContext.RunAsNonRoot = &no
		}, "runAsNonRoot must be true"},
		"uid 0": {func(d *appsv1.Deployment) {
			var root int64
			d.Spec.Template.Spec.SecurityContext.RunAsUser = &root
		}, "runAsUser must not be 0"},
		"privilege escalation": {func(d *appsv1.Deployment) {
			ctr(d).SecurityContext.AllowPrivilegeEscalation = nil
		}, "allowPrivilegeEscalation must be false"},
		"literal LiveKit secret": {func(d *appsv1.Deployment) {
			for i, e := range ctr(d).Env {
				if e.Name == "LIVEKIT_API_SECRET" {
					ctr(d).Env[i] = corev1.EnvVar{Name: e.Name, Value: "hunter2"}
				}
			}
		}, "LIVEKIT_API_SECRET must come from a secretKeyRef"},
		"literal agent token": {func(d *appsv1.Deployment) {
			ctr(d).Env = append(ctr(d).Env, corev1.EnvVar{Name: "CRM_API_TOKEN", Value: "x"})
		}, "env CRM_API_TOKEN has a literal value"},
		"fleet by subPath": {func(d *appsv1.Deployment) {
			mount(d, "fleet").SubPath = "fleet.yaml"
		}, "mounted with subPath"},
		"fleet file not in the ConfigMap": {func(d *appsv1.Deployment) {
			ctr(d).Args[1] = "/etc/lksup/other.yaml"
		}, "has no key other.yaml"},
		"socket directory is a mount point": {func(d *appsv1.Deployment) {
			mount(d, "run").MountPath = "/run/lksup"
		}, "--socket directory /run/lksup is a mount point"},
		"state directory on the root filesystem": {func(d *appsv1.Deployment) {
			setArg(d, "--state-dir=", "/opt/state")
		}, "--state-dir directory /opt/state is on the container's root filesystem"},
		"LKSUP_SOCKET elsewhere": {func(d *appsv1.Deployment) {
			setArg(d, "--socket=", "/run/lksup/other.sock")
		}, "LKSUP_SOCKET \"/run/lksup/lksup.sock\" differs"},
		"image latest": {func(d *appsv1.Deployment) {
			ctr(d).Image = "lksup:latest"
		}, "must name a tag or digest other than latest"},
		"pod labels unselected": {func(d *appsv1.Deployment) {
			d.Spec.Template.Labels = map[string]string{"app": "other"}
		}, "PodDisruptionBudget lksup: selector"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			build := mustBuild(t, repository[0]) // fresh objects for every case
			tc.change(deploymentOf(t, build))
			problems := strings.Join(Check(build), "\n")
			if !strings.Contains(problems, tc.want) {
				t.Fatalf("want a problem containing %q, got:\n%s", tc.want, problems)
			}
		})
	}
}

func TestParseRunArgs(t *testing.T) {
	got, err := parseRunArgs([]string{"run", "--http", "0.0.0.0:1", "/f.yaml", "--socket=/s", "--log-format=json"})
	if err != nil || got != (runArgs{fleet: "/f.yaml", http: "0.0.0.0:1", socket: "/s"}) {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := parseRunArgs([]string{"lksup", "run"}); err == nil {
		t.Fatal("args that do not start with run must be refused")
	}
}
