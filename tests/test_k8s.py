"""The Kubernetes manifests in k8s/ and k8s/monitoring/ and the Dockerfile, checked offline: every document
against its schema (kubernetes-validate for built-in kinds, the operators' CRDs vendored in tests/k8s-crds for
RayJob, PodMonitor and PrometheusRule), k8s/ alone against a cluster that has KubeRay and nothing more, the
RayJob's entrypoint against eg3d.train's own parser and config checks, the metrics ports against the scrape
config, the generated objects against their sources, and a checkov scan."""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from eg3d.config import batch_split
from eg3d.train import build_config, parse_args
from monitoring import kubernetes

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "k8s"
# Applied on its own (`kubectl apply -f k8s/monitoring/`): what needs the Prometheus Operator and Grafana.
MONITORING_DIR = K8S_DIR / "monitoring"
# What a cluster with KubeRay and nothing more knows: Kubernetes' own API groups ("" is the core) and ray.io.
KUBERAY_CLUSTER_GROUPS = {"", "apps", "batch", "networking.k8s.io", "policy", "rbac.authorization.k8s.io", "ray.io"}
# The oldest Kubernetes that managed clusters still commonly run, and the newest that kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
CRD_DIR = REPO / "tests" / "k8s-crds"  # its README.md says which releases they come from
CRD_FILES = {
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}
# kubectl apply -f keeps the whole object in the last-applied-configuration annotation, at most 256 KiB.
LAST_APPLIED_LIMIT = 262144


def manifest_files(folder: Path) -> list[Path]:
    """The files that `kubectl apply -f FOLDER` reads: the folder's own, not its subfolders'."""
    return sorted(path for path in folder.iterdir() if path.suffix in (".yaml", ".yml", ".json"))


def documents(*folders: Path) -> list[tuple[str, dict]]:
    """(path under k8s/, object) for every document that `kubectl apply -f` applies from the folders (by
    default k8s/ and k8s/monitoring/)."""
    found = []
    for folder in folders or (K8S_DIR, MONITORING_DIR):
        for path in manifest_files(folder):
            found += [(str(path.relative_to(K8S_DIR)), doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def the(kind: str) -> dict:
    [obj] = [doc for _, doc in documents() if doc["kind"] == kind]
    return obj


def rayjob_pod_templates() -> dict[str, dict]:
    spec = the("RayJob")["spec"]
    cluster = spec["rayClusterSpec"]
    templates = {"submitter": spec["submitterPodTemplate"], "head": cluster["headGroupSpec"]["template"]}
    templates.update({f"worker {group['groupName']}": group["template"] for group in cluster["workerGroupSpecs"]})
    return templates


def entrypoint_args() -> list[str]:
    command = shlex.split(the("RayJob")["spec"]["entrypoint"])
    assert command[:3] == ["python", "-m", "eg3d.train"], command
    return command[3:]


# ---------------------------------------------------------------------------------------------- schemas

def test_every_document_is_a_known_kind_with_a_name():
    kinds = [(name, doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) for name, doc in documents()]
    assert sorted(kind for _, _, kind, _ in kinds) == [
        "ConfigMap", "NetworkPolicy", "PodMonitor", "PrometheusRule", "RayJob"], kinds
    assert all("namespace" not in doc["metadata"] for _, doc in documents()), "the namespace is chosen at apply time"
    assert all(doc["metadata"]["labels"]["app.kubernetes.io/name"] == "eg3d-train" for _, doc in documents())


def test_k8s_alone_needs_only_kuberay():
    """`kubectl apply -f k8s/` creates the run on any cluster with KubeRay; what needs the Prometheus Operator
    or Grafana's dashboard sidecar is in k8s/monitoring/, which that command does not read (it does not recurse)."""
    for name, doc in documents(K8S_DIR):
        group = doc["apiVersion"].rpartition("/")[0]
        assert group in KUBERAY_CLUSTER_GROUPS, f"{name}: {doc['kind']} ({doc['apiVersion']}) needs more than KubeRay"
        assert "grafana_dashboard" not in doc["metadata"]["labels"], f"{name}: a dashboard belongs in k8s/monitoring/"
    for name, doc in documents(MONITORING_DIR):
        assert (doc["apiVersion"].startswith("monitoring.coreos.com/")
                or "grafana_dashboard" in doc["metadata"]["labels"]), f"{name}: needs no monitoring, belongs in k8s/"
    # kubectl would read a kustomization.yaml as an object, and fail on its missing kind.
    assert not [path for folder in (K8S_DIR, MONITORING_DIR) for path in manifest_files(folder)
                if path.stem == "kustomization"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_kinds_validate(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    built_in = [(name, doc) for name, doc in documents() if (doc["apiVersion"], doc["kind"]) not in CRD_FILES]
    # The RayJob's pod templates are core PodTemplateSpecs: hold them to Kubernetes' own schema too.
    built_in += [(f"rayjob.yaml {role}", {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": template})
                 for role, template in rayjob_pod_templates().items()]
    assert len(built_in) >= 5
    for name, doc in built_in:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} {doc['kind']} at Kubernetes {version}: {error.message} at {list(error.path)}")


def crd_schema(api_version: str, kind: str) -> dict:
    crd = yaml.safe_load((CRD_DIR / CRD_FILES[api_version, kind]).read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return strict(served["schema"]["openAPIV3Schema"])


def strict(schema):
    """The schema with unknown fields refused, as the API server's strict field validation does (a
    structural schema otherwise prunes them silently: a misspelt field would just vanish)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: (value if key == "properties" else strict(value)) for key, value in schema.items()}
    if "properties" in schema:
        schema["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    return schema


def test_custom_resources_validate_against_their_crds():
    import jsonschema

    custom = [(name, doc) for name, doc in documents() if (doc["apiVersion"], doc["kind"]) in CRD_FILES]
    assert sorted(doc["kind"] for _, doc in custom) == ["PodMonitor", "PrometheusRule", "RayJob"]
    # Exactly the CRDs that the manifests use are vendored.
    assert sorted(path.name for path in CRD_DIR.glob("*.yaml")) == sorted(CRD_FILES.values())
    for name, doc in custom:
        schema = crd_schema(doc["apiVersion"], doc["kind"])
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message[:300]}" for e in errors)


def test_crd_validation_catches_a_misspelt_field():
    import jsonschema

    rayjob = copy.deepcopy(the("RayJob"))
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert list(jsonschema.Draft7Validator(crd_schema("ray.io/v1", "RayJob")).iter_errors(rayjob))


@pytest.mark.parametrize("folder", [K8S_DIR, MONITORING_DIR], ids=["k8s", "k8s/monitoring"])
def test_kubectl_parses_the_manifests(folder, tmp_path):
    """`kubectl apply --dry-run=client` needs an API server even so (it downloads the server's OpenAPI and
    API groups), so without one this runs kubectl's offline parser, kustomize, over each folder's files: every
    document well-formed, every object's kind and name unique (kustomize refuses a repeat), and the objects
    (YAML anchors and `<<` merges resolved) the same as the ones the other tests read."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    names = [path.name for path in manifest_files(folder)]
    for name in names:
        shutil.copy(folder / name, tmp_path / name)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": names}))
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(result.stdout) if doc}
    assert rendered == {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in documents(folder)}


# ------------------------------------------------------------------------------------- the training run

def test_entrypoint_parses_and_its_config_validates():
    args = parse_args(entrypoint_args())
    config = build_config(args)  # raises ValueError for a config eg3d.train would refuse
    d = config.distributed
    splits = [batch_split(config, world_size) for world_size in range(d.min_workers, d.max_workers + 1)]
    assert all(sum(split.shares) == config.run.batch_size == 32 for split in splits)
    assert any(len(set(split.shares)) > 1 for split in splits), "the example range includes uneven shares"
    assert d.max_workers >= 2 * d.min_workers > 2, "a realistic span of GPUs, e.g. 4:8"
    assert args.preset == "ffhq512" and args.data.startswith("s3://") and args.storage.startswith("s3://")
    assert config.telemetry.metrics_host == "0.0.0.0", "Prometheus must reach the exporters from outside the pod"


def test_elastic_range_is_the_worker_group_range():
    config = build_config(parse_args(entrypoint_args()))
    cluster = the("RayJob")["spec"]["rayClusterSpec"]
    [group] = cluster["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (config.distributed.min_workers,
                                                            config.distributed.max_workers)
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert cluster["enableInTreeAutoscaling"] is True
    [worker] = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1, "one training worker (one GPU) per pod"


def documented_large_batch_variants() -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """From k8s/rayjob.yaml's comments: the (batch, min, max) of each `--batch B --workers MIN:MAX` variant, and
    the worker group's replicas written out for the first (`replicas: N`, `minReplicas: N`, `maxReplicas: N`)."""
    text = (K8S_DIR / "rayjob.yaml").read_text()
    comments = " ".join(line.strip().removeprefix("#").strip() for line in text.splitlines()
                        if line.strip().startswith("#"))
    return (re.findall(r"--batch (\d+) --workers (\d+):(\d+)", comments),
            dict(re.findall(r"`((?:min|max)?[rR]eplicas): (\d+)`", comments)))


def test_the_documented_64_gpu_variant_validates_and_matches_its_worker_group():
    """The comment's way to 64 GPUs: the entrypoint with --batch 256 --workers 16:64 is a config eg3d.train accepts,
    with the batch rule's schedules, one minibatch-std group of 4 per micro-batch at every world size in the range,
    and a worker group of those replicas passes the RayJob CRD."""
    import jsonschema

    variants, replicas = documented_large_batch_variants()
    assert variants[0] == ("256", "16", "64") and len(variants) == 2, variants
    for batch, low, high in variants:
        args = entrypoint_args()
        args[args.index("--workers") + 1] = f"{low}:{high}"
        config = build_config(parse_args(args + ["--batch", batch]), log=lambda _: None)
        assert config.distributed.max_workers == config.run.batch_size // 4, "4 images per GPU at the most workers"
        assert (config.ema.ema_kimg, config.loss.blur_fade_kimg) == (10 * int(batch) / 32, 200 * int(batch) / 32)
        for world_size in range(int(low), int(high) + 1):
            split = batch_split(config, world_size)
            assert {size for rank in range(world_size) for size in split.micro_batches(rank)} == {4}, world_size
    _, low, high = variants[0]
    assert replicas == {"replicas": low, "minReplicas": low, "maxReplicas": high}
    rayjob = copy.deepcopy(the("RayJob"))
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=int(low), minReplicas=int(low),
                                                                    maxReplicas=int(high))
    assert not list(jsonschema.Draft7Validator(crd_schema("ray.io/v1", "RayJob")).iter_errors(rayjob))


def test_run_name_is_the_pod_label_prometheus_turns_into_run():
    args = parse_args(entrypoint_args())
    for role, template in rayjob_pod_templates().items():
        if role != "submitter":
            assert template["metadata"]["labels"]["eg3d-run"] == args.name, role


def metrics_ports(template: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for container in template["spec"]["containers"]
            for port in container.get("ports", []) if port["name"].startswith("eg3d-")}


def test_metrics_ports_match_the_exporters_and_the_scrape_config():
    config = build_config(parse_args(entrypoint_args()))
    driver_port = config.telemetry.metrics_port
    scrape = yaml.safe_load((REPO / "monitoring" / "prometheus" / "kubernetes.yml").read_text())
    [keep] = [rule for rule in scrape["scrape_configs"][0]["relabel_configs"] if rule.get("action") == "keep"]
    port_name = re.compile(keep["regex"])
    templates = rayjob_pod_templates()
    # The driver runs on the head; local rank r serves on metrics_port + 1 + r, and each worker pod has one rank.
    assert metrics_ports(templates["head"]) == {"eg3d-metrics-0": driver_port}
    assert metrics_ports(templates["worker gpu"]) == {"eg3d-metrics-1": driver_port + 1}
    for template in templates.values():
        for name, number in metrics_ports(template).items():
            assert port_name.fullmatch(name) and name == f"eg3d-metrics-{number - driver_port}"
    podmonitor = the("PodMonitor")["spec"]
    assert [endpoint["port"] for endpoint in podmonitor["podMetricsEndpoints"]] == ["eg3d-metrics-0", "eg3d-metrics-1"]
    assert podmonitor["selector"]["matchLabels"].items() <= templates["head"]["metadata"]["labels"].items()
    assert podmonitor["selector"]["matchLabels"].items() <= templates["worker gpu"]["metadata"]["labels"].items()
    for endpoint in podmonitor["podMetricsEndpoints"]:
        assert endpoint["honorLabels"] is True
        # The alert rules look for up{job="eg3d"}.
        assert {"targetLabel": "job", "replacement": "eg3d"} in endpoint["relabelings"]
    admitted = [port["port"] for rule in the("NetworkPolicy")["spec"]["ingress"] for port in rule.get("ports", [])]
    assert {"eg3d-metrics-0", "eg3d-metrics-1"} <= set(admitted)


def test_network_policy_keeps_ray_traffic_inside_the_run():
    policy = the("NetworkPolicy")["spec"]
    labels = {"app.kubernetes.io/name": "eg3d-train"}
    assert policy["podSelector"]["matchLabels"] == labels and policy["policyTypes"] == ["Ingress"]
    [internal] = [rule for rule in policy["ingress"] if "ports" not in rule]
    assert internal["from"] == [{"podSelector": {"matchLabels": labels}}]
    for role, template in rayjob_pod_templates().items():
        assert labels.items() <= template["metadata"]["labels"].items(), role
    for rule in policy["ingress"]:
        for peer in rule["from"]:
            assert peer.get("podSelector", {}).get("matchLabels"), "every admitted peer is a labelled pod"


def test_pods_run_as_the_image_user_without_privileges():
    for role, template in rayjob_pod_templates().items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
        assert spec["automountServiceAccountToken"] is (role == "head"), f"{role}: only the autoscaler needs the API"
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"] and container["resources"]["requests"]
        if role != "submitter":
            [shm] = [v for v in spec["volumes"] if v["name"] == "shm"]
            assert shm["emptyDir"]["medium"] == "Memory"
            assert {"name": "shm", "mountPath": "/dev/shm"} in spec["containers"][0]["volumeMounts"]
    cluster = the("RayJob")["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert cluster["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False


def test_credentials_only_through_a_secret_reference():
    assert not [doc for _, doc in documents() if doc["kind"] == "Secret"]
    for role, template in rayjob_pod_templates().items():
        for container in template["spec"]["containers"]:
            for variable in container.get("env", []):
                if "KEY" in variable["name"] or "TOKEN" in variable["name"] or "SECRET" in variable["name"]:
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], variable["name"]


def test_job_lifecycle():
    spec = the("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert 0 < spec["backoffLimit"] <= 3, "retries resume from the newest checkpoint; a few are enough"
    images = {container["image"] for template in rayjob_pod_templates().values()
              for container in template["spec"]["containers"]}
    assert len(images) == 1, f"one image for the submitter, head and workers: {images}"


def test_every_pod_template_sets_its_restart_policy():
    """Written out, as in KubeRay's samples: KubeRay replaces a failed Ray pod (with autoscaler v2 it refuses
    any policy but Never on the head and the workers), and the submitter's Job retries its pod (backoffLimit)."""
    for role, template in rayjob_pod_templates().items():
        assert template["spec"].get("restartPolicy") == "Never", role


# --------------------------------------------------------------------------------- generated from sources

def test_generated_objects_are_up_to_date():
    for file_name, text in kubernetes.build().items():
        assert (MONITORING_DIR / file_name).read_text() == text, \
            f"k8s/monitoring/{file_name} is stale: run python -m monitoring.kubernetes"
    assert kubernetes.OUTPUT_DIR == MONITORING_DIR


def test_prometheus_rule_carries_exactly_the_alert_rules():
    alerts = yaml.safe_load((REPO / "monitoring" / "prometheus" / "alerts.yml").read_text())
    assert the("PrometheusRule")["spec"]["groups"] == alerts["groups"]


def test_dashboard_config_map_carries_exactly_the_dashboards():
    config_map = the("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {path.name: path.read_text() for path in (REPO / "monitoring" / "dashboards").glob("*.json")}
    assert config_map["data"] == files
    assert all(json.loads(text)["uid"] for text in config_map["data"].values())
    # kubectl apply keeps a copy of the object in an annotation: the ConfigMap must fit in it.
    assert len(json.dumps(config_map)) < LAST_APPLIED_LIMIT * 0.8


# ------------------------------------------------------------------------------------------ the image

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_dockerfile_installs_what_the_entrypoint_needs():
    instructions = dockerfile_instructions()
    arguments = dict(arg.split("=", 1) for op, arg in instructions if op == "ARG" and "=" in arg)
    [base] = [arg for op, arg in instructions if op == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-py311-${CUDA}"
    ray_version = arguments["RAY_VERSION"]
    assert the("RayJob")["spec"]["rayClusterSpec"]["rayVersion"] == ray_version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [ray_requirement] = [r for r in project["dependencies"] if r.startswith("ray[")]
    assert version(ray_version) >= version(re.search(r">=([0-9.]+)", ray_requirement).group(1))
    assert '"torch==${TORCH_VERSION}"' in " ".join(arg for op, arg in instructions if op == "RUN")
    [torch_requirement] = [r for r in project["dependencies"] if r.startswith("torch")]
    assert version(arguments["TORCH_VERSION"]) >= version(torch_requirement.removeprefix("torch>="))
    installs = [shlex.split(arg) for op, arg in instructions if op == "RUN" and "pip install" in arg]
    project_install = [words for words in installs if ".[dali,deepspeed]" in words]
    assert project_install, "the package with its dali and deepspeed extras"
    assert {"dali", "deepspeed"} <= set(project["optional-dependencies"])
    # Every package that setuptools packs is copied into the build context and not ignored.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {source for op, arg in instructions if op == "COPY"
              for source in [word for word in arg.split() if not word.startswith("--")][:-1]}
    ignore = (REPO / ".dockerignore").read_text().split()
    for package in [p.removesuffix("*") for p in packages] + ["pyproject.toml", "README.md", "tests/constraints.txt"]:
        assert package in copied, f"the Dockerfile does not copy {package}"
        assert f"!{package}/" in ignore or f"!{package}" in ignore, f".dockerignore leaves out {package}"
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] == "1000", "the image runs as the Ray image's non-root user"


# ------------------------------------------------------------------------------------------- checkov

def checkov(*args: str) -> dict:
    if shutil.which("checkov") is None:
        pytest.skip("checkov is not on PATH (tests/run.sh installs it in a virtualenv of its own)")
    result = subprocess.run(["checkov", *args, "--skip-download", "--quiet", "--compact", "--output", "json"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert result.returncode in (0, 1), result.stderr
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, dict) else {"results": {"failed_checks": [
        check for report in reports for check in report["results"]["failed_checks"]]}}


def failures(report: dict) -> list[str]:
    failed = report.get("results", {}).get("failed_checks", [])
    return [f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in failed]


@pytest.mark.slow
def test_checkov_passes_on_the_manifests_and_the_pods_they_make(tmp_path):
    """checkov knows no RayJob, so the pods it makes (submitter, head, workers) are scanned as Pods too,
    with the RayJob's checkov.io/skip annotations of their template."""
    manifests = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, manifests)  # with k8s/monitoring/: checkov's --directory recurses
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {**template["metadata"], "name": f"eg3d-{role.replace(' ', '-')}"},
             "spec": template["spec"]} for role, template in rayjob_pod_templates().items()]
    (manifests / "rayjob-pods.yaml").write_text(yaml.safe_dump_all(pods))
    report = checkov("--directory", str(manifests), "--framework", "kubernetes")
    assert not failures(report), "\n".join(failures(report))
    # Every object read, the RayJob with its `<<` merges included.
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] == len(documents()) + len(pods), summary
    assert summary["passed"] > 50, summary


def test_checkov_skips_are_written_once_and_reach_every_pod():
    """Each skip and its reason is one line of k8s/rayjob.yaml (the templates merge anchored sets with `<<:`)
    and, once parsed, on every pod template that needs it; the head alone mounts a service account token."""
    written = re.findall(r"^\s*(checkov\.io/skip\d+: .+)$", (K8S_DIR / "rayjob.yaml").read_text(), re.MULTILINE)
    repeated = {line for line in written if written.count(line) > 1}
    assert not repeated, f"written more than once (merge an anchored set instead): {repeated}"
    skipped = {role: sorted(value.split("=")[0] for key, value in template["metadata"]["annotations"].items()
                            if key.startswith("checkov.io/skip"))
               for role, template in rayjob_pod_templates().items()}
    every_pod = ["CKV_K8S_15", "CKV_K8S_21", "CKV_K8S_22", "CKV_K8S_40", "CKV_K8S_43", "CKV_K8S_8", "CKV_K8S_9"]
    assert skipped == {"submitter": every_pod,
                       "head": sorted(every_pod + ["CKV_K8S_35", "CKV_K8S_38"]),
                       "worker gpu": sorted(every_pod + ["CKV_K8S_35"])}
    assert len(written) < sum(len(checks) for checks in skipped.values())


@pytest.mark.slow
def test_checkov_passes_on_the_dockerfile():
    report = checkov("--file", str(REPO / "Dockerfile"), "--framework", "dockerfile")
    assert not failures(report), "\n".join(failures(report))

