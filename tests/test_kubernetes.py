"""deploy/k8s, the kustomize base and the example overlay, as a cluster would receive them.

Each kustomization is rendered by tests/support/kustomize.py (the subset of kustomize the
manifests use; anything else makes it fail, never silently ignored). Every rendered
resource is validated against the Kubernetes API JSON schemas of a pinned version with
kubernetes-validate (its schemas ship inside the package: no network), strictly (an
unknown field, a typo like `readinesProbe`, is an error). Then what the schemas cannot see:
probes, security context, sizing, selectors, network policy, secrets, roll-outs. Last, the
rendered settings, Secret and site files start the real service (`mm-cds serve --prod`,
on loopback) and its probes answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import requests

from .support import kustomize
from .support.loopback import first_answer
from .support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
EXAMPLE = K8S / "overlays" / "example"
KUBERNETES_VERSION = "1.30"
# docs/operations.md, "Memory of a pod": a pod's shape (MM_CDS_WORKERS=2) after bench/realistic.py's
# HTTP runs (workload (a) at 300 and 10,000 resources). Proportional set size counts the pages
# the workers share with the master (the preloaded knowledge) once, as the memory cgroup does;
# a worker's resident size is the ceiling if none stayed shared. Each worker's feedback writer
# (a child process) shares its worker's pages and never writes the knowledge's: its private
# memory is its ceiling.
MEASURED_MASTER_PSS_MB = 38
MEASURED_WORKER_PSS_MB = 75
MEASURED_WORKER_RSS_MB = 143
MEASURED_WRITER_PSS_MB = 29
MEASURED_WRITER_PRIVATE_MB = 6.5
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def render(directory: Path = EXAMPLE) -> list[dict]:
    return kustomize.build(directory)


def one(resources: list[dict], kind: str, name: str) -> dict:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def configmap(resources: list[dict], name: str) -> dict:
    """A generated ConfigMap by its name before the hash suffix."""
    found = [r for r in resources if r["kind"] == "ConfigMap" and re.fullmatch(rf"{name}-[a-z0-9]{{10}}", r["metadata"]["name"])]
    assert len(found) == 1, f"ConfigMap {name}-<hash>: {len(found)} rendered"
    return found[0]


def service_container(resources: list[dict]) -> dict:
    return container(one(resources, "Deployment", "mm-cds"), "mm-cds")


def container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env(container_: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container_.get("env", [])}


def quantity(value: str | int) -> float:
    """A Kubernetes quantity in base units (cores, bytes)."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


def pod_specs(resources: list[dict]) -> list[tuple[str, dict]]:
    return [(r["metadata"]["name"], r["spec"]["template"]["spec"]) for r in resources if r["kind"] in POD_KINDS]


def mounts_by_path(pod: dict, container_: dict) -> dict[str, tuple[dict, dict]]:
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["volumeName"] if "volumeName" in m else m["name"]]) for m in container_["volumeMounts"]}


def settings(resources: list[dict]) -> dict:
    return tomllib.loads(configmap(resources, "mm-cds-settings")["data"]["settings.toml"])


# --- the schemas -----------------------------------------------------------------------------

@pytest.mark.parametrize("directory", [BASE, EXAMPLE], ids=["base", "example-overlay"])
def test_every_rendered_manifest_validates_against_the_kubernetes_api_schemas(directory):
    resources = render(directory)
    assert len(resources) >= 13
    for resource in resources:
        # SchemaNotFoundError (an unknown kind or apiVersion) is raised too: a failure.
        assert kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION
    names = [(r["kind"], r["metadata"]["name"]) for r in resources]
    assert len(names) == len(set(names))


def test_the_validator_refuses_what_a_cluster_would_refuse():
    """The check above is worth something: a misspelt field, a wrong type and a removed API are errors."""
    deployment = one(render(), "Deployment", "mm-cds")
    spelt = json.loads(json.dumps(deployment))
    spelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready", "port": 8080}}
    typed = json.loads(json.dumps(deployment))
    typed["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    for broken in (spelt, typed):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    hpa = {**one(render(), "HorizontalPodAutoscaler", "mm-cds"), "apiVersion": "autoscaling/v2beta2"}  # gone in 1.26
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_the_overlay_renders_the_whole_deployment():
    kinds = sorted((r["kind"], r["metadata"]["name"].rsplit("-", 1)[0] if r["kind"] == "ConfigMap" else r["metadata"]["name"])
                   for r in render())
    assert kinds == sorted([
        ("ConfigMap", "mm-cds-nginx"), ("ConfigMap", "mm-cds-settings"), ("ConfigMap", "mm-cds-site"),
        ("Deployment", "mm-cds"), ("Deployment", "mm-cds-nginx"),
        ("HorizontalPodAutoscaler", "mm-cds"),
        ("NetworkPolicy", "mm-cds"), ("NetworkPolicy", "mm-cds-nginx"),
        ("PodDisruptionBudget", "mm-cds"), ("PodDisruptionBudget", "mm-cds-nginx"),
        ("Secret", "mm-cds-secrets"), ("Service", "mm-cds"), ("Service", "mm-cds-nginx"),
        ("ServiceAccount", "mm-cds"),
    ])
    assert not [r for r in render(BASE) if r["kind"] == "Secret"], "the base holds no secret"


# --- the pods ----------------------------------------------------------------------------------

@pytest.mark.parametrize("directory", [BASE, EXAMPLE], ids=["base", "example-overlay"])
def test_every_container_runs_non_root_on_a_read_only_root_filesystem(directory):
    for name, pod in pod_specs(render(directory)):
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod.get("initContainers", []) + pod["containers"]:
            context = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            where = f"{name}/{c['name']}"
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser", 0) > 0, where
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
    pod = one(render(directory), "Deployment", "mm-cds")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)


def test_the_service_can_write_where_it_writes():
    """Read-only root: /tmp, the metrics directory and the data directory are emptyDir volumes."""
    resources = render()
    pod = one(resources, "Deployment", "mm-cds")["spec"]["template"]["spec"]
    c = service_container(resources)
    mounts = mounts_by_path(pod, c)
    variables = env(c)
    for path in ("/tmp", variables["PROMETHEUS_MULTIPROC_DIR"]["value"], variables["MM_CDS_DATA_DIR"]["value"]):
        mount = next((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), None)
        assert mount, f"{path} is on the read-only root filesystem"
        assert "emptyDir" in mounts[mount][1] and not mounts[mount][0].get("readOnly"), path
    assert "emptyDir" in mounts[variables["PROMETHEUS_MULTIPROC_DIR"]["value"]][1]  # its own, not /tmp's


def test_probes_point_at_health_and_ready_on_the_container_port():
    c = service_container(render())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(env(c)["MM_CDS_PORT"]["value"])}
    expected = {"livenessProbe": "/health", "readinessProbe": "/ready", "startupProbe": "/ready"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == ports["http"], probe
    # The startup probe allows a slow knowledge load before liveness may restart the pod.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert env(c)["MM_CDS_HOST"]["value"] == "0.0.0.0"  # reachable by the kubelet and the Service


def test_requests_and_limits_fit_the_measured_worker_memory():
    resources = render()
    for name, pod in pod_specs(resources):
        for c in pod.get("initContainers", []) + pod["containers"]:
            for resource in ("cpu", "memory"):
                request, limit = c["resources"]["requests"][resource], c["resources"]["limits"][resource]
                assert quantity(limit) >= quantity(request), f"{name}/{c['name']} {resource}"
    c = service_container(resources)
    # gunicorn's default (cores + 1) would count the node's cores, not the pod's share.
    workers = int(env(c)["MM_CDS_WORKERS"]["value"])
    processes = workers + 1  # the master holds the preloaded knowledge too
    # the request: what such a pod was measured to use, with a quarter to spare
    used = MEASURED_MASTER_PSS_MB + workers * (MEASURED_WORKER_PSS_MB + MEASURED_WRITER_PSS_MB)
    assert quantity(c["resources"]["requests"]["memory"]) >= 1.25 * used * 1e6
    # the limit: every process at a worker's whole resident size, nothing shared, and the writers
    ceiling = processes * MEASURED_WORKER_RSS_MB + workers * 2 * MEASURED_WRITER_PRIVATE_MB
    assert quantity(c["resources"]["limits"]["memory"]) >= ceiling * 1e6
    assert quantity(c["resources"]["requests"]["cpu"]) >= workers / 2  # the HPA's utilisation is of this


def test_shutdown_lets_in_flight_calls_finish():
    resources = render()
    deployment = one(resources, "Deployment", "mm-cds")
    c = service_container(resources)
    # `mm-cds serve --prod` replaces itself with gunicorn: gunicorn gets SIGTERM and drains.
    assert c["command"] == ["mm-cds", "serve", "--prod"]
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) >= 5
    graceful = settings(resources).get("graceful_timeout", 30)
    assert graceful == 30
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(sleep[1]) + graceful
    rollout = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0  # a roll-out never lowers the serving capacity
    nginx = one(resources, "Deployment", "mm-cds-nginx")
    assert nginx["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > graceful


# --- how the pieces find each other ------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is used here"
    return selector["matchLabels"].items() <= labels.items()


def test_selectors_and_targets_match_the_pods():
    resources = render()
    for name in ("mm-cds", "mm-cds-nginx"):
        deployment = one(resources, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _selects(deployment["spec"]["selector"], labels), name
        service = one(resources, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items(), name
        pod_ports = {p["name"]: p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in pod_ports or port["targetPort"] in pod_ports.values(), name
        pdb = one(resources, "PodDisruptionBudget", name)
        assert _selects(pdb["spec"]["selector"], labels), name
        for other in resources:  # no selector of this app picks the other app's pods
            if other["kind"] == "Deployment" and other["metadata"]["name"] != name:
                assert not service["spec"]["selector"].items() <= other["spec"]["template"]["metadata"]["labels"].items()
                assert not _selects(pdb["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"])
    hpa = one(resources, "HorizontalPodAutoscaler", "mm-cds")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = one(resources, "Deployment", target["name"])
    assert (target["kind"], target["apiVersion"]) == (deployment["kind"], deployment["apiVersion"])
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2
    # A drain can always evict a pod: the budget leaves room below the autoscaler's minimum.
    assert one(resources, "PodDisruptionBudget", "mm-cds")["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert one(resources, "PodDisruptionBudget", "mm-cds-nginx")["spec"]["minAvailable"] < one(
        resources, "Deployment", "mm-cds-nginx")["spec"]["replicas"]
    pod = deployment["spec"]["template"]["spec"]
    assert one(resources, "ServiceAccount", pod["serviceAccountName"])["automountServiceAccountToken"] is False


def test_network_policies_allow_only_what_the_service_needs():
    resources = render()
    service_pods = one(resources, "Deployment", "mm-cds")["spec"]["template"]["metadata"]["labels"]
    nginx_pods = one(resources, "Deployment", "mm-cds-nginx")["spec"]["template"]["metadata"]["labels"]
    port = service_container(resources)["ports"][0]["containerPort"]
    for name, pods in (("mm-cds", service_pods), ("mm-cds-nginx", nginx_pods)):
        policy = one(resources, "NetworkPolicy", name)["spec"]
        assert _selects(policy["podSelector"], pods)
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]  # both default-deny, then these rules
        for rule in policy["egress"]:
            assert rule.get("to") and rule.get("ports"), f"{name}: an egress rule allows every destination or port"
            for peer in rule["to"]:
                assert peer and peer.get("ipBlock", {}).get("cidr") not in ("0.0.0.0/0", "::/0"), name
                assert "namespaceSelector" not in peer or peer["namespaceSelector"].get("matchLabels"), \
                    f"{name}: every namespace"
        dns = [r for r in policy["egress"] if {p["port"] for p in r["ports"]} == {53}]
        assert len(dns) == 1 and {p["protocol"] for p in dns[0]["ports"]} == {"UDP", "TCP"}, name
    policy = one(resources, "NetworkPolicy", "mm-cds")["spec"]
    [ingress] = policy["ingress"]
    assert len(ingress["from"]) == 1 and set(ingress["from"][0]) == {"podSelector"}  # this namespace only
    assert _selects(ingress["from"][0]["podSelector"], nginx_pods)
    assert not _selects(ingress["from"][0]["podSelector"], service_pods)
    assert [p["port"] for p in ingress["ports"]] == [port]
    ports = sorted(p["port"] for r in policy["egress"] for p in r["ports"])
    assert ports == [53, 53, 443, 5432]  # DNS, the FHIR server (overlay), PostgreSQL
    fhir = next(r for r in policy["egress"] if r["ports"][0]["port"] == 443)
    assert all("ipBlock" in peer for peer in fhir["to"])
    base_ports = sorted(p["port"] for r in one(render(BASE), "NetworkPolicy", "mm-cds")["spec"]["egress"] for p in r["ports"])
    assert base_ports == [53, 53, 5432], "the base names no FHIR server"
    front = one(resources, "NetworkPolicy", "mm-cds-nginx")["spec"]
    to_service = [r for r in front["egress"] if r["ports"][0]["port"] == port]
    assert len(front["egress"]) == 2 and _selects(to_service[0]["to"][0]["podSelector"], service_pods)


def test_the_database_url_and_jwt_keys_come_from_the_secret_not_the_manifests():
    resources = render()
    secret = one(resources, "Secret", "mm-cds-secrets")
    for name, pod in pod_specs(resources):
        for c in pod.get("initContainers", []) + pod["containers"]:
            for variable in c.get("env", []):
                assert "postgres" not in str(variable.get("value", "")), f"{name}/{c['name']}: {variable['name']} inlined"
    url = env(service_container(resources))["MM_CDS_DATABASE_URL"]
    assert "value" not in url
    assert url["valueFrom"]["secretKeyRef"] == {"name": "mm-cds-secrets", "key": "database-url"}
    assert secret["stringData"]["database-url"].startswith("postgresql://")
    # The settings name JWKS files that the Secret volume holds.
    pod = one(resources, "Deployment", "mm-cds")["spec"]["template"]["spec"]
    mounts = mounts_by_path(pod, service_container(resources))
    secret_dir = next(path for path, (_, volume) in mounts.items() if volume.get("secret", {}).get("secretName") == "mm-cds-secrets")
    issuers = settings(resources)["security"]["issuers"]
    assert issuers
    for issuer in issuers:
        path = Path(issuer["jwks_file"])
        assert path.parent == Path(secret_dir) and path.name in secret["stringData"]
        assert all("d" not in key for key in json.loads(secret["stringData"][path.name])["keys"])  # public keys only
    for resource in resources:  # the keys are in the Secret only
        if resource["kind"] == "ConfigMap":
            assert not any('"kty"' in text for text in resource["data"].values()), resource["metadata"]["name"]


@pytest.mark.parametrize("directory", [BASE, EXAMPLE], ids=["base", "example-overlay"])
def test_every_image_is_pinned(directory):
    for name, pod in pod_specs(render(directory)):
        for c in pod.get("initContainers", []) + pod["containers"]:
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+[-.\w]*", tag), f"{name}/{c['name']}: {image} is not pinned"
    deployment = one(render(directory), "Deployment", "mm-cds")["spec"]["template"]["spec"]
    assert deployment["initContainers"][0]["image"] == deployment["containers"][0]["image"]


# --- roll-outs ---------------------------------------------------------------------------------

def _referenced_configmaps(deployment: dict) -> set[str]:
    return {v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v}


def test_a_changed_site_file_or_setting_rolls_the_pods_and_nothing_else(tmp_path):
    """A change to a ConfigMap's file renames the ConfigMap (hash suffix), so the pod template
    changes and the Deployment rolls; an unchanged ConfigMap keeps its name."""
    copy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", copy)
    overlay = copy / "k8s" / "overlays" / "example"

    def names() -> tuple[dict[str, str], dict[str, set[str]]]:
        resources = render(overlay)
        generated = {c["metadata"]["name"].rsplit("-", 1)[0]: c["metadata"]["name"] for c in resources if c["kind"] == "ConfigMap"}
        used = {n: _referenced_configmaps(one(resources, "Deployment", n)) for n in ("mm-cds", "mm-cds-nginx")}
        return generated, used

    before, used = names()
    assert used == {"mm-cds": {before["mm-cds-settings"], before["mm-cds-site"]}, "mm-cds-nginx": {before["mm-cds-nginx"]}}
    assert names()[0] == before  # the hash depends on the content only
    site_file = overlay / "site" / "ValueSet-talquetamab-site.json"
    valueset = json.loads(site_file.read_text())
    valueset["version"] = valueset.get("version", "1") + "-changed"
    site_file.write_text(json.dumps(valueset, indent=2))
    after, used = names()
    assert after["mm-cds-site"] != before["mm-cds-site"]
    assert {k: v for k, v in after.items() if k != "mm-cds-site"} == {k: v for k, v in before.items() if k != "mm-cds-site"}
    assert after["mm-cds-site"] in used["mm-cds"] and before["mm-cds-site"] not in used["mm-cds"]
    (overlay / "settings.toml").write_text((overlay / "settings.toml").read_text().replace('log_level = "INFO"', 'log_level = "DEBUG"'))
    (copy / "k8s" / "base" / "nginx" / "upstream.conf").write_text(
        (copy / "k8s" / "base" / "nginx" / "upstream.conf").read_text().replace("keepalive 16;", "keepalive 32;"))
    again, used = names()
    assert again["mm-cds-settings"] != after["mm-cds-settings"] and again["mm-cds-settings"] in used["mm-cds"]
    assert again["mm-cds-nginx"] != after["mm-cds-nginx"] and used["mm-cds-nginx"] == {again["mm-cds-nginx"]}


def test_the_site_configmap_is_copied_to_a_plain_directory_for_the_service():
    """A ConfigMap volume holds `..data` links and a hidden timestamped directory beside the
    files; the service reads every *.json below a site directory, so it would load each
    file twice. The init container copies the files only, and the service reads the copy."""
    resources = render()
    pod = one(resources, "Deployment", "mm-cds")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    init_mounts = mounts_by_path(pod, init)
    source = next(p for p, (_, v) in init_mounts.items() if v.get("configMap", {}).get("name") == configmap(resources, "mm-cds-site")["metadata"]["name"])
    target = next(p for p, (_, v) in init_mounts.items() if "emptyDir" in v)
    site_dirs = env(service_container(resources))["MM_CDS_SITE_DIRS"]["value"].split(":")
    assert site_dirs == [target]
    service_mounts = mounts_by_path(pod, service_container(resources))
    assert service_mounts[target][1] is init_mounts[target][1] and service_mounts[target][0]["readOnly"] is True
    script = init["command"][-1]
    assert f"{source}/*.json" in script and target in script
    assert init["command"][:2] == ["sh", "-ec"]  # a failed copy fails the pod's start


def test_the_example_site_files_are_the_repository_examples():
    site = configmap(render(), "mm-cds-site")["data"]
    examples = {p.name: p.read_text() for p in (ROOT / "examples" / "site").glob("*.json")}
    assert {k: v for k, v in site.items() if k.endswith(".json")} == examples


# --- the nginx front ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_nginx_front_serves_the_repository_server_block_and_passes_nginx_t(tmp_path):
    resources = render()
    files = configmap(resources, "mm-cds-nginx")["data"]
    assert files["mm-cds.conf"] == (ROOT / "deploy" / "nginx" / "mm-cds.conf").read_text()  # the shared file, verbatim
    service = one(resources, "Service", "mm-cds")
    upstream = re.search(r"upstream\s+mm_cds\s*\{(.*?)\}", files["upstream.conf"], re.S).group(1)
    servers = re.findall(r"^\s*server\s+(\S+?)(?:\s[^;]*)?;", upstream, re.M)
    assert servers == [f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"]
    nginx = one(resources, "Deployment", "mm-cds-nginx")
    pod = nginx["spec"]["template"]["spec"]
    c = container(nginx, "nginx")
    listen = re.findall(r"^\s*listen\s+(\d+)", files["mm-cds-listen.conf"], re.M)
    assert [int(p) for p in listen] == [p["containerPort"] for p in c["ports"]]
    config_dir = next(p for p, (_, v) in mounts_by_path(pod, c).items() if "configMap" in v)
    assert c["command"][:3] == ["nginx", "-c", f"{config_dir}/nginx.conf"]
    assert "/tmp" in mounts_by_path(pod, c)  # pid and temp files (nginx.conf)
    # The rendered files, checked by the real nginx. No cluster DNS here: the Service's
    # name becomes a loopback address, nothing else changes.
    for name, text in files.items():
        text = text.replace(f"server {servers[0]}", "server 127.0.0.1:8080").replace(f"{config_dir}/", f"{tmp_path}/")
        text = text.replace("/tmp/", f"{tmp_path}/")
        (tmp_path / name).write_text(text)
    check = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                            "-g", "error_log stderr notice;"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


# --- the rendered configuration starts the service ---------------------------------------------

@pytest.mark.slow
def test_the_rendered_settings_secret_and_site_start_the_service(tmp_path):
    """The example overlay's ConfigMaps and Secret laid out as the pod sees them (paths moved
    into tmp_path), the init container's copy done, and `mm-cds serve --prod` started with
    the container's environment: it starts, its probes answer, the site's files are loaded,
    and a call without a token is refused (the trusted issuer's keys were read)."""
    resources = render()
    pod = one(resources, "Deployment", "mm-cds")["spec"]["template"]["spec"]
    c = service_container(resources)
    mounts = mounts_by_path(pod, c)

    def moved(path: str) -> str:
        return str(tmp_path / path.lstrip("/"))

    for path, (_, volume) in mounts.items():
        folder = Path(moved(path))
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = next(r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            data = one(resources, "Secret", volume["secret"]["secretName"])["stringData"]
        else:
            continue
        for key, text in data.items():
            # Paths inside the files (jwks_file) move too.
            text = re.sub(r'"(/[^"]+)"', lambda m: f'"{moved(m.group(1))}"' if any(
                m.group(1).startswith(p + "/") for p in mounts) else m.group(0), text)
            (folder / key).write_text(text)
    site_source = configmap(resources, "mm-cds-site")["data"]
    for key, text in site_source.items():  # what the init container does
        if key.endswith(".json"):
            (Path(moved(env(c)["MM_CDS_SITE_DIRS"]["value"])) / key).write_text(text)
    environment = {k: os.environ[k] for k in ("PATH", "LANG", "SYSTEMROOT") if k in os.environ}
    for name, variable in env(c).items():
        if "value" in variable:
            value = variable["value"]
            environment[name] = moved(value) if value.startswith("/") else value
    secret_ref = env(c)["MM_CDS_SERVICE_SECRET"]["valueFrom"]["secretKeyRef"]  # the production server needs it
    environment["MM_CDS_SERVICE_SECRET"] = one(resources, "Secret", secret_ref["name"])["stringData"][secret_ref["key"]]
    port = free_port()
    environment.update(MM_CDS_HOST="127.0.0.1", MM_CDS_PORT=str(port), MM_CDS_WORKERS="1")  # loopback, one worker
    # No PostgreSQL in this test: the database URL stays unset (SQLite in the data directory).
    assert "MM_CDS_DATABASE_URL" not in environment
    command = shutil.which(c["command"][0], path=str(Path(sys.executable).parent))
    assert command, f"{c['command'][0]} is not installed beside {sys.executable}"
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([command, *c["command"][1:]], env=environment, stdout=log, stderr=log, cwd=tmp_path)
    try:
        ready = first_answer(f"http://127.0.0.1:{port}{c['readinessProbe']['httpGet']['path']}", process,
                             tmp_path / "serve.log", within=60)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        health = requests.get(f"http://127.0.0.1:{port}{c['livenessProbe']['httpGet']['path']}", timeout=5)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        unauthenticated = requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=5)
        assert unauthenticated.status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=60)
    text = (tmp_path / "serve.log").read_text()
    assert "allow_insecure" not in text and "INSECURE" not in text
    # Each site file is loaded once, from the plain copy, replacing the bundled ValueSet of its url.
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    replaced = sorted(e["by"] for e in events if e.get("event") == "artifact_replaced")
    site_dir = moved(env(c)["MM_CDS_SITE_DIRS"]["value"])
    assert replaced == sorted(f"{site_dir}/{k}" for k in site_source if k.endswith(".json"))
    assert [e.get("event") for e in events].count("knowledge_loaded") == 1
