"""deploy/: the files parse, and they agree with each other and with the server they run."""

from __future__ import annotations

import json
import shlex
import tomllib

import yaml

from lamina.cli import build_parser
from lamina.config import ServerConfig
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    return list(json.loads(args)) if args.startswith("[") else shlex.split(args)


def test_dockerfile_is_multi_stage_non_root_with_a_grpc_health_check() -> None:
    steps = dockerfile()
    stages = [args for word, args in steps if word == "FROM"]
    assert len(stages) == 2 and stages[1].endswith("AS runtime")
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][1] :]
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = exec_form(next(args for word, args in runtime if word == "ENTRYPOINT"))
    assert entry[:2] == ["lamina", "serve"]
    args = build_parser().parse_args(entry[1:])  # the flags exist and parse
    assert (args.host, args.port, args.config, args.metrics_port) == (
        "0.0.0.0",
        6334,
        "/etc/lamina/lamina.toml",
        9464,
    )
    assert args.data.startswith(next(a for w, a in runtime if w == "VOLUME").strip('[]"'))
    health = next(args for word, args in runtime if word == "HEALTHCHECK")
    probe = exec_form(health.split("CMD", 1)[1].strip())
    assert probe[:2] == ["lamina", "health"] and build_parser().parse_args(probe[1:]).target.endswith(":6334")
    exposed = {p for word, args in runtime if word == "EXPOSE" for p in args.split()}
    assert exposed == {"6334", "9464"}


def test_compose_runs_the_image_with_volume_config_and_health_check() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"]["lamina"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert any(v.endswith(":/var/lib/lamina") for v in service["volumes"])
    assert service["configs"][0]["target"] == "/etc/lamina/lamina.toml"
    assert service["healthcheck"]["test"][1:3] == ["lamina", "health"]
    assert {p.split(":")[1] for p in service["ports"]} == {"6334", "9464"}
    assert set(compose["volumes"]) == {"lamina-data"}


def test_kubernetes_statefulset_service_and_secret_fit_together() -> None:
    docs = {}
    for path in (DEPLOY / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert set(docs) == {"StatefulSet", "Service", "Secret"}
    sts, svc, secret = docs["StatefulSet"], docs["Service"], docs["Secret"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 6334, "metrics": 9464}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/var/lib/lamina" and mounts["config"] == "/etc/lamina"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert "lamina.toml" in secret["stringData"]
    assert svc["spec"]["selector"] == sts["spec"]["template"]["metadata"]["labels"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)


def test_example_configs_load_and_hold_keys() -> None:
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    for text in ((DEPLOY / "lamina.example.toml").read_text(), secret["stringData"]["lamina.toml"]):
        config = ServerConfig.from_dict(tomllib.loads(text))
        assert config.keys and config.keys[0].role == "admin"  # needed to listen on 0.0.0.0


def test_ray_cluster_config_starts_the_sharded_front_end_on_the_head() -> None:
    cluster = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    assert (
        cluster["provider"]["type"] == "local"
        and cluster["file_mounts"]["~/lamina.toml"] == "deploy/lamina.toml"
    )
    assert (DEPLOY / "lamina.example.toml").is_file()
    assert any("laminadb[ray]" in c for c in cluster["setup_commands"])
    serve = next(c for c in cluster["head_start_ray_commands"] if "lamina serve" in c)
    argv = shlex.split(serve.removeprefix("nohup ").split(">")[0])
    args = build_parser().parse_args(argv[1:])  # the flags exist and parse
    assert (args.ray, args.host, args.port, args.config, args.data) == (
        "auto",
        "0.0.0.0",
        6334,
        "~/lamina.toml",
        "/var/lib/lamina",
    )
    assert any(c.startswith("ray start --head") for c in cluster["head_start_ray_commands"])
    assert any(c.startswith("ray start --address") for c in cluster["worker_start_ray_commands"])
