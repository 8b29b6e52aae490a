"""Pinned platform versions: the one place they are written.

Beam's Python SDK and Beam's Java jars must be the same version. 2.62.0 is the newest Beam whose Flink
runner (`beam-runners-flink-1.19`) resolves with all its dependencies from the Maven registry reachable
here; 2.63-2.75 lack `beam-runners-java-job-service` or the runner itself, and no Beam version has a
`beam-runners-flink-1.20` artifact served. Flink therefore is 1.19 (the newest Flink that Beam 2.62 runs
on), from the PyPI `apache-flink` wheels.
"""

BEAM = "2.62.0"
FLINK = "1.19.3"
FLINK_MINOR = "1.19"
KAFKA = "4.1.1"  # broker; the Beam side uses kafka-clients 3.9.1 (see devstack/maven/beam-services/pom.xml)
VERSITYGW = "v1.8.0"  # S3-compatible server (Apache-2.0), built from the Go module proxy
JAVA = "17"

# Production (flink-deploy/): what the manifests are validated against (flink-deploy/validate.py fetches the
# schemas from package registries: Kubernetes from PyPI `kubernetes-validate`, the CRDs from Maven Central).
K8S = ("1.33", "1.34", "1.35")  # DOKS minor versions the manifests are checked against (strict schemas)
KUBERNETES_VALIDATE = "1.37.0"  # PyPI package that carries the Kubernetes JSON schemas
FLINK_OPERATOR = "1.10.0"  # Flink Kubernetes Operator (the newest whose API jar, with its CRDs, Maven Central serves here)
STRIMZI = "0.51.0"  # io.strimzi:api test jar: the v1-only CRDs (the only API that Strimzi 1.x serves)
KUSTOMIZE = "v5.8.1"  # sigs.k8s.io/kustomize/kustomize/v5, built from the Go module proxy
# PodMonitor/ServiceMonitor/PrometheusRule (flink-deploy/base/monitoring.yaml, observability-generated.yaml): no
# registry artifact carries the Prometheus Operator's CRDs, so they are generated with controller-gen from the
# operator's API module, as the operator's own build does.
PROMETHEUS_OPERATOR = "v0.95.2"  # github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
CONTROLLER_TOOLS = "v0.20.1"  # sigs.k8s.io/controller-tools/cmd/controller-gen
