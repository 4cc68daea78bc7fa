"""deploy/ cannot rot: every unit and manifest is parsed and checked against the real CLI.

* systemd units: ``ExecStart`` parses with ``cachesync``'s own argument parser,
  every ``Environment=`` / environment-file name is a setting's variable, the
  config file loads;
* Kubernetes: two ``listen`` replicas, probes on the port ``--metrics-port``
  names and on the paths the health server answers, container arguments that
  parse, Secret keys that are settings' variables, the ConfigMap's
  ``cachesync.toml`` loads, and every reference (Secret, ConfigMap, labels)
  points at something that exists.
"""

from __future__ import annotations

import json
import shlex
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachesync.cli import build_parser
from cachesync.config import CONFIG_ENV, Settings, env_name, load_config_file
from cachesync.health import HealthServer, Heartbeat, Probe

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTING_VARIABLES = {env_name(n) for n in Settings.names()} | {CONFIG_ENV}


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as ``{section: [(key, value), ...]}`` (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def _parses(argv: list[str], where: str) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `cachesync {' '.join(argv)}` is not a valid command line")


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_there_is_a_unit_per_process() -> None:
    assert {p.name for p in UNITS} == {
        "cachesync-listen.service",
        "cachesync-retry.service",
        "cachesync-relay.service",
    }


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_unit_runs_a_real_command_with_real_settings(path: Path) -> None:
    unit = _unit(path)
    service = unit["Service"]
    assert {"Unit", "Service", "Install"} <= set(unit)
    starts = [v for k, v in service if k == "ExecStart"]
    assert len(starts) == 1
    argv = shlex.split(starts[0])
    assert Path(argv[0]).name == "cachesync"
    command = path.name.removeprefix("cachesync-").removesuffix(".service")
    args = _parses(argv[1:], path.name)
    assert args.command == command
    assert args.setting_metrics_port is not None, "no --metrics-port"
    Settings.from_mapping({"metrics_port": args.setting_metrics_port})
    environment = dict(v.split("=", 1) for k, v in service if k == "Environment")
    assert set(environment) <= SETTING_VARIABLES, set(environment) - SETTING_VARIABLES
    assert ("KillSignal", "SIGTERM") in service  # stops after the current batch
    assert ("RestartPreventExitStatus", "2") in service  # a configuration error
    env_files = [v for k, v in service if k == "EnvironmentFile"]
    assert [Path(f).name for f in env_files] == ["cachesync.env"]
    assert Path(environment[CONFIG_ENV]).name == "cachesync.toml"


def test_systemd_environment_and_config_file_load_as_settings() -> None:
    secrets = _env_file(DEPLOY / "systemd" / "cachesync.env")
    assert set(secrets) <= SETTING_VARIABLES, set(secrets) - SETTING_VARIABLES
    config = DEPLOY / "systemd" / "cachesync.toml"
    load_config_file(config)
    settings = Settings.load(config, environ=secrets)
    assert settings.mysql_url and settings.redis_url and settings.name != "default"


def _manifests() -> Iterator[dict[str, Any]]:
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield document


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in _manifests():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_kubernetes_objects_are_the_documented_set() -> None:
    kinds = sorted(_objects())
    assert kinds == [
        ("ConfigMap", "cachesync-config"),
        ("Deployment", "cachesync-listen"),
        ("Deployment", "cachesync-retry"),
        ("PodDisruptionBudget", "cachesync-listen"),
        ("Secret", "cachesync-urls"),
    ]


def test_kubernetes_secret_and_config_map_hold_settings(tmp_path: Path) -> None:
    objects = _objects()
    secret = objects[("Secret", "cachesync-urls")]["stringData"]
    assert set(secret) <= SETTING_VARIABLES, set(secret) - SETTING_VARIABLES
    toml = objects[("ConfigMap", "cachesync-config")]["data"]["cachesync.toml"]
    path = tmp_path / "cachesync.toml"
    path.write_text(toml)
    load_config_file(path)
    settings = Settings.load(path, environ=secret)
    assert settings.mysql_url and settings.redis_url and settings.es_url


@pytest.mark.parametrize("name", ["cachesync-listen", "cachesync-retry"])
def test_kubernetes_deployment_runs_a_real_command_with_probes(name: str) -> None:
    objects = _objects()
    deployment = objects[("Deployment", name)]
    spec = deployment["spec"]
    template = spec["template"]
    labels = template["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    if name == "cachesync-listen":
        assert spec["replicas"] == 2  # a leader and a standby
        pdb = objects[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"]
        assert pdb.items() <= labels.items()
    (container,) = template["spec"]["containers"]
    argv = [*container["command"], *container["args"]]
    assert argv[0] == "cachesync"
    args = _parses(argv[1:], name)
    assert args.command == name.removeprefix("cachesync-")
    port = int(args.setting_metrics_port)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    probes = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == port
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert set(env) <= SETTING_VARIABLES
    (secret_ref,) = container["envFrom"]
    assert ("Secret", secret_ref["secretRef"]["name"]) in objects
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    (mount,) = container["volumeMounts"]
    config_map = volumes[mount["name"]]["configMap"]["name"]
    assert ("ConfigMap", config_map) in objects
    assert Path(env[CONFIG_ENV]).parent == Path(mount["mountPath"])
    assert Path(env[CONFIG_ENV]).name in objects[("ConfigMap", config_map)]["data"]
    assert template["spec"]["terminationGracePeriodSeconds"] >= 30


def test_the_probe_paths_are_what_the_health_server_answers() -> None:
    paths = set()
    for doc in _manifests():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                paths |= {
                    container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")
                }
    paths.add("/metrics")
    server = HealthServer(Probe(Heartbeat(), lambda: (True, "ready")), 0, "127.0.0.1").start()
    try:
        for path in sorted(paths):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                assert r.status == 200, path
                body = r.read().decode()
            if path != "/metrics":
                assert json.loads(body)["ok"] is True
            else:
                assert "# TYPE cachesync_source_lag_seconds gauge" in body
    finally:
        server.close()
