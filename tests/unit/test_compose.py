"""docker-compose.yml is complete and agrees with the code, its settings and its configs.

Docker cannot run here, so this reads the compose file (and the nginx, Prometheus and NATS
files it mounts) and checks what a failed deployment would otherwise reveal: a container
without a health check, a `LEDGER_` variable the settings do not know, a service started
before the servers it needs, a route the proxy does not send to its service, a replica
Prometheus does not scrape, a NATS node outside the cluster, a secret written in the file.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute

from ledger.embedded import EmbeddedServerError
from ledger.embedded.nats_server import _nats_server_binary
from ledger.host import ServiceHost
from ledger.http import _add_platform_routes, create_app
from ledger.services import available_services
from ledger.settings import Settings

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
LEDGER_SERVICES = sorted(available_services())
ONE_SHOT_JOBS = {"migrate"}
OPERATOR_CREATED = {"./deploy/keys"}
"""Bind-mounted paths the operator creates (docs/deployment.md), not the repository."""
NATS_NODES = sorted(name for name in SERVICES if name.startswith("nats-"))
HTTP_PORT = 8000
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE", re.IGNORECASE)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Each service this one waits for, with the condition it waits for."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def interpolated(text: str, values: dict[str, str]) -> str:
    """`text` with compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` filled in."""
    def fill(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        value = values.get(name, "")
        if operator in (":-", "-") and not value:
            return argument
        return value

    return _INTERPOLATION.sub(fill, text)


def example_values() -> dict[str, str]:
    """deploy/env.example with a stand-in for every empty value, as an operator fills it."""
    values = {}
    for line in (ROOT / "deploy/env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            values[name] = value or f"filled-{name.lower()}"
    return values


def environments(node: Any) -> Iterator[dict[str, str]]:
    """Every `environment` block anywhere in the file, extension fields (`x-...`) included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "environment":
                yield environment(node)
            yield from environments(value)
    elif isinstance(node, list):
        for item in node:
            yield from environments(item)


POSTGRES_USERS = sorted(
    name for name, service in SERVICES.items()
    if any(re.fullmatch(r"LEDGER_([A-Z]+_)?DATABASE_URL", key) for key in environment(service))
)
NATS_USERS = sorted(name for name, service in SERVICES.items()
                    if "LEDGER_NATS_URL" in environment(service))  # fmt: skip


# ---- health -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_container_has_a_health_check_or_is_the_one_shot_job(name: str) -> None:
    service = SERVICES[name]
    healthcheck = service.get("healthcheck") or {}

    if name in ONE_SHOT_JOBS:
        assert service.get("restart") == "no", f"{name} runs once"
        assert healthcheck.get("disable") is True, f"{name}'s exit code is its health"
    else:
        assert not healthcheck.get("disable"), f"{name} disables its health check"
        assert healthcheck.get("test"), f"{name} has no health check"


def test_the_one_shot_job_migrates_and_everyone_waits_for_it_to_succeed() -> None:
    assert SERVICES["migrate"]["command"] == ["migrate"]
    for name in LEDGER_SERVICES:
        assert depends_on(SERVICES[name]).get("migrate") == "service_completed_successfully"


def test_health_checks_ask_paths_the_app_serves() -> None:
    app = FastAPI()
    _add_platform_routes(app)
    served = {route.path for route in app.routes if isinstance(route, APIRoute)}
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    image_check = re.search(r"HEALTHCHECK[^\n]*\n[^\n]*healthcheck\.py\", \"([^\"]+)\"",
                            dockerfile)  # fmt: skip

    assert image_check is not None, "the Dockerfile's HEALTHCHECK runs deploy/healthcheck.py"
    assert image_check.group(1) in served
    for name in LEDGER_SERVICES:
        assert SERVICES[name]["healthcheck"]["test"][-1] in served


# ---- settings and dependencies ----------------------------------------------------------


def test_every_ledger_variable_set_is_a_setting() -> None:
    fields = {f"LEDGER_{name.upper()}" for name in Settings.model_fields}
    set_anywhere = {name for env in environments(COMPOSE) for name in env
                    if name.startswith("LEDGER_")}  # fmt: skip

    assert set_anywhere, "the services are configured through LEDGER_ variables"
    assert set_anywhere - fields == set()


def test_every_setting_the_services_are_given_is_valid() -> None:
    values = example_values()
    for name in [*LEDGER_SERVICES, *ONE_SHOT_JOBS]:
        env = {key: interpolated(value, values)
               for key, value in environment(SERVICES[name]).items()}  # fmt: skip
        fields = {f"LEDGER_{field.upper()}": field for field in Settings.model_fields}
        given = {fields[key]: value for key, value in env.items() if key in fields}
        # Paths inside the containers do not exist here; everything else must validate.
        given.pop("auth_public_keys", None)

        Settings.model_validate(given)


def test_every_ledger_process_uses_postgres_and_every_service_nats() -> None:
    assert set(POSTGRES_USERS) == {*LEDGER_SERVICES, *ONE_SHOT_JOBS}
    assert set(NATS_USERS) == set(LEDGER_SERVICES)


@pytest.mark.parametrize("name", POSTGRES_USERS)
def test_who_uses_postgres_waits_for_it_and_for_the_migrations(name: str) -> None:
    env = environment(SERVICES[name])
    deps = depends_on(SERVICES[name])
    database_url = interpolated(env["LEDGER_DATABASE_URL"], example_values())

    assert urlsplit(database_url).hostname == "postgres"
    assert deps.get("postgres") == "service_healthy"
    if name not in ONE_SHOT_JOBS:
        assert deps.get("migrate") == "service_completed_successfully"


@pytest.mark.parametrize("name", NATS_USERS)
def test_who_uses_nats_names_every_node_and_waits_for_them(name: str) -> None:
    env = environment(SERVICES[name])
    seeds = {urlsplit(url.strip()).hostname for url in env["LEDGER_NATS_URL"].split(",")}
    deps = depends_on(SERVICES[name])

    assert len(NATS_NODES) == 3
    assert seeds == set(NATS_NODES), "clients survive a node's loss only if they know them all"
    assert {node: deps.get(node) for node in NATS_NODES} == dict.fromkeys(
        NATS_NODES, "service_healthy"
    )
    assert env.get("LEDGER_EVENTS_STREAM_REPLICAS") == "3"


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_each_service_runs_two_replicas_in_production(name: str) -> None:
    service = SERVICES[name]
    env = environment(service)

    assert service["command"] == ["serve", name]
    assert service["deploy"]["replicas"] == 2
    assert env["LEDGER_ENVIRONMENT"] == "production"
    assert env["LEDGER_HTTP_HOST"] == "0.0.0.0"
    assert int(env.get("LEDGER_HTTP_PORT", HTTP_PORT)) == HTTP_PORT


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_each_service_has_its_own_nats_user_and_reply_prefix(name: str) -> None:
    env = environment(SERVICES[name])
    accounts = (ROOT / "deploy/nats/accounts.conf").read_text(encoding="utf-8")

    assert env["LEDGER_NATS_USER"] == name
    assert re.search(rf"\buser: {name}\n", accounts)
    assert env["LEDGER_NATS_INBOX_PREFIX"] == f"_INBOX.{name}"
    assert f'"_INBOX.{name}.>"' in accounts


# ---- secrets ----------------------------------------------------------------------------


def test_no_secret_is_written_in_the_file() -> None:
    for env in environments(COMPOSE):
        for name, value in env.items():
            if _SECRET_NAME.search(name) and not name.startswith("NATS_ROUTE_"):
                assert _INTERPOLATION.fullmatch(value), f"{name} must come from .env"
    # Route URLs carry the route password: only ever as an interpolation.
    for node in NATS_NODES:
        for name, value in environment(SERVICES[node]).items():
            if name.startswith("NATS_ROUTE_") and name != "NATS_ROUTE_PASSWORD":
                assert "${NATS_ROUTE_PASSWORD}" in value


def test_every_variable_the_file_reads_is_in_the_example_env() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    read = {match.group(1) for match in _INTERPOLATION.finditer(text)}
    example = (ROOT / "deploy/env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE))

    assert read - listed == set()
    for name in listed:
        if _SECRET_NAME.search(name):
            assert re.search(rf"^{name}=$", example, re.MULTILINE), f"{name} ships empty"


def test_every_mounted_file_exists() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith(".") and source not in OPERATOR_CREATED:
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


# ---- the proxy ----------------------------------------------------------------------------


def nginx_routes() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The proxy's regex locations in order, each with the upstream it passes to, and each
    upstream's compose service (from `server <service>:<port>`)."""
    conf = (ROOT / "deploy/nginx/nginx.conf").read_text(encoding="utf-8")
    upstreams = dict(re.findall(r"upstream\s+(\w+)\s*\{[^}]*?server\s+([\w-]+):" + str(HTTP_PORT),
                                conf))  # fmt: skip
    locations = re.findall(r"location\s+~\s+(\S+)\s*\{[^}]*?proxy_pass\s+http://(\w+);", conf)
    return locations, upstreams


def routed_to(path: str) -> str | None:
    """The compose service nginx sends `path` to: the first regex location that matches."""
    locations, upstreams = nginx_routes()
    for pattern, upstream in locations:
        if re.search(pattern, path):
            return upstreams[upstream]
    return None


@cache
def app_paths() -> frozenset[str]:
    """Every /v1/ path template of the whole app (all services, the platform's routes)."""
    settings = Settings(auth="off", database_url="postgresql://unused@localhost/unused",
                        nats_url="nats://localhost:1")  # fmt: skip
    app = create_app(ServiceHost(settings, list(available_services().values())),
                     manage_host=False)  # fmt: skip
    # The OpenAPI document lists every path, however the routers were included.
    return frozenset(path for path in app.openapi()["paths"] if path.startswith("/v1/"))


def sample(path: str, value: str = "id-1") -> str:
    """A concrete request path for a path template."""
    return re.sub(r"\{[^}]+\}", value, path)


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_the_proxy_sends_each_route_of_a_service_to_that_service(name: str) -> None:
    router = available_services()[name].router()
    assert router is not None
    paths = [route.path for route in router.routes if isinstance(route, APIRoute)]

    assert paths
    for path in paths:
        assert routed_to(sample(path)) == name, f"{path} is not proxied to {name}"


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_the_proxy_sends_each_stream_to_the_service_that_owns_its_category(name: str) -> None:
    streams = [path for path in app_paths() if "{stream_id}" in path]

    assert streams
    for path in streams:
        for category in available_services()[name].categories:
            stream = sample(path.replace("{stream_id}", f"{category}-42"))
            assert routed_to(stream) == name, f"{stream} is not proxied to {name}"


def test_every_route_of_the_app_is_proxied_to_a_ledger_service() -> None:
    # A /v1/ route added outside the services' routers (as the event streams are) needs a
    # rule of its own here and in deploy/nginx/nginx.conf.
    owned = {route.path for service in available_services().values()
             for route in (service.router() or FastAPI().router).routes
             if isinstance(route, APIRoute)}  # fmt: skip
    for path in sorted(app_paths() - owned):
        assert "{stream_id}" in path, f"{path} belongs to no service: route it in nginx.conf"


def test_the_proxy_passes_only_to_ledger_services_and_answers_nothing_else() -> None:
    _, upstreams = nginx_routes()

    assert set(upstreams.values()) == set(LEDGER_SERVICES)
    assert routed_to("/metrics") is None
    assert routed_to("/health/ready") is None
    assert routed_to("/v1/accountsfoo") is None
    assert set(depends_on(SERVICES["proxy"])) == set(LEDGER_SERVICES)


# ---- Prometheus -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_prometheus_scrapes_every_replica_of_every_service(name: str) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text("utf-8"))
    jobs = [job for job in config["scrape_configs"]
            if any(name in sd.get("names", [])
                   for sd in job.get("dns_sd_configs", []))]  # fmt: skip

    assert len(jobs) == 1, f"one job discovers every replica of {name} by DNS"
    (job,) = jobs
    (discovery,) = job["dns_sd_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert (discovery["type"], discovery["port"]) == ("A", HTTP_PORT)
    mounted = [v for v in SERVICES["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mounted == ["./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


# ---- NATS -----------------------------------------------------------------------------------


def node_config(node: str) -> Path:
    """The config file the node's command names, where it is in the repository."""
    command: list[str] = SERVICES[node]["command"]
    inside = Path(command[command.index("--config") + 1])
    volumes: list[str] = SERVICES[node]["volumes"]
    (mount,) = [v for v in volumes if v.split(":")[1] == str(inside.parent)]
    return ROOT / mount.split(":")[0] / inside.name


def resolved_config(path: Path) -> str:
    """The config text with its `include`s inlined (relative to the including file)."""
    text = path.read_text(encoding="utf-8")
    return re.sub(r"^\s*include\s+(\S+)\s*$",
                  lambda m: resolved_config(path.parent / m.group(1)), text,
                  flags=re.MULTILINE)  # fmt: skip


@pytest.mark.parametrize("node", NATS_NODES)
def test_each_nats_node_has_its_config_and_joins_the_three_node_cluster(node: str) -> None:
    config = resolved_config(node_config(node))
    env = {name: interpolated(value, example_values())
           for name, value in environment(SERVICES[node]).items()}  # fmt: skip
    routes_block = re.search(r"routes:\s*\[([^\]]*)\]", config)
    assert routes_block is not None
    routes = [env[ref.lstrip("$")] for ref in routes_block.group(1).split()]
    cluster_port = re.search(r"cluster\s*\{[^}]*?listen:\s*[\d.]+:(\d+)", config)

    assert re.search(rf"^server_name:\s*{node}\s*$", config, re.MULTILINE)
    assert re.search(r"^jetstream\s*\{", config, re.MULTILINE)
    assert cluster_port is not None
    assert {urlsplit(route).hostname for route in routes} == set(NATS_NODES)
    assert {urlsplit(route).port for route in routes} == {int(cluster_port.group(1))}
    assert {urlsplit(route).password for route in routes} == {env["NATS_ROUTE_PASSWORD"]}
    assert SERVICES[node]["healthcheck"]["test"][-1] == "http://127.0.0.1:8222/healthz"
    assert re.search(r"^http:\s*[\d.]+:8222\b", config, re.MULTILINE)


@pytest.mark.parametrize("node", NATS_NODES)
def test_nats_server_accepts_each_node_config(node: str) -> None:
    try:
        binary = _nats_server_binary()
    except EmbeddedServerError:
        pytest.skip("no nats-server binary (the embedded extra installs one)")
    env = {name: interpolated(value, example_values())
           for name, value in environment(SERVICES[node]).items()}  # fmt: skip

    checked = subprocess.run(
        [str(binary), "-t", "-c", str(node_config(node))], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert checked.returncode == 0, checked.stderr + checked.stdout
