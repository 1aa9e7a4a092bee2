"""docker-compose.yml, the Dockerfile and .env.example, checked without a Docker engine: structure, pinned
images, and that every setting the stack passes is one the code reads (and every one it needs is there)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.settings import Settings, environment_variable

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENGINE_IMAGE = "kite-execution-engine"

EXPECTED_SERVICES = {
    "postgres",
    "temporal-schema",
    "temporal",
    "temporal-namespace",
    "temporal-search-attributes",
    "temporal-ui",
    "prometheus",
    "migrate",
    "worker",
    "market-data",
    "api",
    "codec-server",
}
SEARCH_ATTRIBUTE_NAMES = {"StrategyId", "UserId", "OrderType", "OrderStatus", "Symbol", "BrokerOrderId", "ExitReason"}

# Read by temporalio.envconfig.ClientConfig (Temporal's client conventions).
TEMPORAL_CLIENT_ENV = {
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_CERT_DATA",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_DATA",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
}
CODEC_ENV = {"ENGINE_PAYLOAD_CODEC_KEYS", "ENGINE_PAYLOAD_CODEC_KEY_ID"}
CODEC_SERVER_ENV = CODEC_ENV | {"ENGINE_CODEC_CORS_ORIGINS", "ENGINE_CODEC_AUTH_TOKEN"}
# Defaults that are wrong in a container: SQLite on a throwaway disk, a secret key generated per replica,
# a Temporal server on localhost, order data in plain text.
REQUIRED_IN_PRODUCTION = {"DATABASE_URL", "ENGINE_SECRET_KEY", "TEMPORAL_ADDRESS", "ENGINE_PAYLOAD_CODEC_KEYS"}
SECRET_NAME = re.compile(r"PASSWORD|PWD|SECRET|TOKEN|_KEYS?$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def engine_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services.items() if spec.get("image", "").startswith(f"{ENGINE_IMAGE}:")}


def settings_env_names() -> set[str]:
    return {environment_variable(field_name) for field_name in Settings.model_fields}


def environment(spec: dict[str, Any]) -> dict[str, Any]:
    env = spec.get("environment") or {}
    assert isinstance(env, dict), "environment is written as a mapping"
    return env


def image_tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return tag if name and "/" not in tag else ""


def test_every_service_of_the_stack_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        image = spec.get("image", "")
        tag = image_tag(image)
        assert tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.match(r"^v?\d+\.\d+(\.\d+)?", tag), f"{name}: {image!r} is not pinned"


def test_dockerfile_base_is_pinned_and_runs_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [base] = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)

    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    # Dependencies at the lock's versions, then the project itself without resolving anything again.
    assert "pip install -r requirements.lock" in dockerfile and "pip install --no-deps ." in dockerfile


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}

    assert {".env", ".git/", ".venv/", "data/"} <= ignored
    assert "!.env.example" in ignored and "README.md" not in ignored


def test_engine_image_is_built_here_and_runs_the_right_commands(services: dict[str, dict[str, Any]]) -> None:
    engine = engine_services(services)

    assert set(engine) == {"migrate", "worker", "market-data", "api", "codec-server"}
    assert all(spec["build"]["context"] == "." for spec in engine.values())
    assert services["worker"]["command"] == ["python", "worker.py"]
    assert services["api"]["command"] == [
        "uvicorn", "apps.api.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-server-header",
        "--log-config", "deploy/logging/uvicorn.json",
    ]
    assert services["codec-server"]["command"][:2] == ["uvicorn", "apps.codec_server:app"]
    assert services["migrate"]["command"] == ["engine", "db", "upgrade"]
    assert services["market-data"]["command"] == ["engine", "market-data"]


@pytest.mark.parametrize(
    ("module", "attribute", "source"),
    [
        ("worker", None, "worker.py"),
        ("apps.api.main", "app", "apps/api/main.py"),
        ("apps.codec_server", "app", "apps/codec_server.py"),
        ("apps.market_data", "main", "apps/market_data.py"),
    ],
)
def test_service_entry_points_import(module: str, attribute: str | None, source: str) -> None:
    assert (ROOT / source).is_file(), f"{source} is where the compose command says the program lives"
    code = f"import importlib; m = importlib.import_module({module!r})"
    if attribute:
        code += f"; assert getattr(m, {attribute!r}) is not None"
    env = {**os.environ, "ENGINE_PAYLOAD_CODEC_KEYS": "k1:" + "A" * 43 + "="}
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_a_checkouts_alembic_ini_finds_the_packaged_migrations() -> None:
    alembic_ini = ROOT / "alembic.ini"
    script_location = re.search(r"^script_location\s*=\s*(\S+)", alembic_ini.read_text(), flags=re.MULTILINE)
    assert script_location is not None
    assert (ROOT / script_location.group(1).replace("%(here)s/", "") / "env.py").exists()


def test_engine_services_get_only_settings_the_code_reads(services: dict[str, dict[str, Any]]) -> None:
    readable = settings_env_names() | TEMPORAL_CLIENT_ENV | CODEC_ENV
    for name in ("worker", "market-data", "api"):
        unknown = set(environment(services[name])) - readable
        assert not unknown, f"{name} gets variables no code reads: {sorted(unknown)}"
    assert set(environment(services["migrate"])) <= settings_env_names()
    assert set(environment(services["codec-server"])) <= CODEC_SERVER_ENV


def test_every_required_setting_is_provided(services: dict[str, dict[str, Any]]) -> None:
    required_by_settings = {name.upper() for name, field in Settings.model_fields.items() if field.is_required()}
    for name in ("worker", "market-data", "api"):
        env = environment(services[name])
        missing = {key for key in REQUIRED_IN_PRODUCTION | required_by_settings if env.get(key) in (None, "")}
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["DATABASE_URL"].endswith("@postgres:5432/engine")
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert environment(services["migrate"])["DATABASE_URL"] == environment(services["worker"])["DATABASE_URL"]
    assert (
        environment(services["codec-server"])["ENGINE_PAYLOAD_CODEC_KEYS"]
        == environment(services["worker"])["ENGINE_PAYLOAD_CODEC_KEYS"]
    )


def test_optional_settings_pass_through_only_when_set(services: dict[str, dict[str, Any]]) -> None:
    # An empty string would override the code's default (and fail to parse as a number).
    for name, spec in engine_services(services).items():
        for key, value in environment(spec).items():
            if isinstance(value, str):
                assert not re.search(r"\$\{[A-Z_]+:?-\}", value), f"{name}: {key} would be set to ''"


def test_secrets_come_from_the_env_file_never_from_this_file(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for key, value in environment(spec).items():
            if SECRET_NAME.search(key) and value is not None:
                references = INTERPOLATION.findall(str(value))
                assert references, f"{name}: {key} holds a literal secret"
                assert all(operator == ":?" for _, operator, _ in references), (
                    f"{name}: {key} must be required from .env (${{NAME:?message}}), not defaulted"
                )
        assert "env_file" not in spec, f"{name}: env_file would hand every secret to the service"


def test_env_example_documents_every_variable_and_holds_no_secret(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    interpolated = {name for name, _, _ in INTERPOLATION.findall(text)}
    passed_through = {
        key for spec in compose["services"].values() for key, value in environment(spec).items() if value is None
    }
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))

    assert interpolated | passed_through <= documented, sorted((interpolated | passed_through) - documented)
    for line in example.splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match and SECRET_NAME.search(match.group(1)):
            assert match.group(2) == "", f".env.example ships a value for {match.group(1)}"


def test_interpolations_are_well_formed() -> None:
    text = COMPOSE_FILE.read_text()
    opened = text.count("${")

    assert opened == len(INTERPOLATION.findall(text)), "a ${...} reference is malformed"
    assert "$$" not in text


def test_worker_is_stateless_and_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]

    assert "container_name" not in worker and "ports" not in worker and "volumes" not in worker
    assert isinstance(worker["deploy"]["replicas"], int) and worker["deploy"]["replicas"] >= 1
    assert not any("container_name" in spec for spec in services.values())


def test_dependencies_wait_for_health_and_finished_jobs(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            else:
                assert services[dependency].get("restart") in {"no", "on-failure:5"}, f"{dependency} is a job"
    for name in ("worker", "market-data", "api"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "temporal-search-attributes": {"condition": "service_completed_successfully"},
        }
    assert services["temporal"]["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    assert services["temporal-search-attributes"]["depends_on"] == {
        "temporal-namespace": {"condition": "service_completed_successfully"}
    }


def test_long_running_services_have_healthchecks_or_are_watched(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "temporal", "api", "codec-server", "prometheus", "market-data"):
        assert services[name]["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    for name, spec in services.items():
        if spec.get("restart") == "unless-stopped":
            assert name in {"postgres", "temporal", "temporal-ui", "worker", "market-data", "api", "codec-server",
                            "prometheus"}


def test_temporal_runs_on_postgres_with_its_dynamic_config(services: dict[str, dict[str, Any]]) -> None:
    temporal = environment(services["temporal"])
    [mount] = services["temporal"]["volumes"]
    host_dir, container_dir = mount.split(":")[:2]
    config_path = temporal["DYNAMIC_CONFIG_FILE_PATH"]

    assert temporal["DB"] == "postgres12" and temporal["POSTGRES_SEEDS"] == "postgres"
    assert container_dir == "/etc/temporal/config/dynamicconfig"
    dynamic_config = yaml.safe_load((ROOT / host_dir / Path(config_path).name).read_text())
    assert config_path == f"config/dynamicconfig/{Path(config_path).name}"
    for key, overrides in dynamic_config.items():
        assert isinstance(overrides, list) and all("value" in override for override in overrides), key


def test_every_mounted_file_and_job_script_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        mounts = {}
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                mounts[target] = ROOT / source
        command = spec.get("command") or []
        for argument in command:
            if argument.startswith("/deploy/"):
                host_path = next(
                    (root / argument.removeprefix(target).lstrip("/"))
                    for target, root in mounts.items()
                    if argument.startswith(target)
                )
                assert host_path.is_file(), f"{name} runs missing {argument}"


def test_job_scripts_are_valid_shell() -> None:
    scripts = sorted((ROOT / "deploy").rglob("*.sh"))

    assert len(scripts) >= 5
    for script in scripts:
        completed = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert completed.returncode == 0, f"{script.name}: {completed.stderr}"


def test_search_attribute_job_registers_the_engines_attributes() -> None:
    script = (ROOT / "deploy/temporal/register-search-attributes.sh").read_text()
    declared = re.search(r'^SEARCH_ATTRIBUTES="([^"]+)"', script, flags=re.MULTILINE)
    assert declared is not None

    assert set(declared.group(1).split()) == SEARCH_ATTRIBUTE_NAMES
    assert "--type Keyword" in script
    from engine.temporal import SEARCH_ATTRIBUTES

    assert {key.name for key in SEARCH_ATTRIBUTES} == SEARCH_ATTRIBUTE_NAMES


def test_ui_is_pointed_at_the_codec_server(services: dict[str, dict[str, Any]]) -> None:
    ui_env = environment(services["temporal-ui"])
    codec_env = environment(services["codec-server"])

    codec_default = re.search(r":-([^}]+)\}", ui_env["TEMPORAL_CODEC_ENDPOINT"])
    origin_default = re.search(r":-([^}]+)\}", codec_env["ENGINE_CODEC_CORS_ORIGINS"])
    assert codec_default is not None and origin_default is not None
    assert codec_default.group(1) == "http://localhost:8081"
    assert "127.0.0.1:8081:8081" in services["codec-server"]["ports"]
    assert origin_default.group(1) == "http://localhost:8080"
    assert "127.0.0.1:8080:8080" in services["temporal-ui"]["ports"]


def test_published_ports_bind_to_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_metrics_listen_on_localhost_unless_configured(services: dict[str, dict[str, Any]]) -> None:
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    assert environment(services["worker"])["ENGINE_METRICS_HOST"] == "0.0.0.0"  # the compose network, not the host
    assert "ports" not in services["worker"]


def test_prometheus_scrapes_every_worker_replica(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    mounted = [volume for volume in prometheus["volumes"] if volume.startswith("./deploy/prometheus/")]

    assert mounted == ["./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]
    targets = {
        job["job_name"]: (job["dns_sd_configs"][0]["names"], job["dns_sd_configs"][0]["port"])
        for job in config["scrape_configs"]
    }
    assert targets == {"engine-worker": (["worker"], 9464), "temporal-sdk": (["worker"], 9465),
                       "market-data": (["market-data"], 9466)}
    assert set(services["worker"]["expose"]) == {"9464", "9465"}
    assert services["market-data"]["expose"] == [str(Settings.model_fields["market_data_metrics_port"].default)]


@pytest.mark.parametrize("service", ["api", "codec-server"])
def test_http_services_log_json(services: dict[str, dict[str, Any]], service: str) -> None:
    command = services[service]["command"]
    config = command[command.index("--log-config") + 1]
    code = (
        "import json, logging, logging.config, sys; "
        f"logging.config.dictConfig(json.load(open({config!r}))); "
        "logging.getLogger('uvicorn.access').info('%s - \"%s %s HTTP/%s\" %d', '10.0.0.1:5', 'GET', '/health', "
        "'1.1', 200)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)

    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert (line["logger"], line["level"]) == ("uvicorn.access", "INFO")
    assert "GET /health" in line["message"]


def test_the_market_data_service_runs_once_restarts_on_failure_and_logs_json(
    services: dict[str, dict[str, Any]]
) -> None:
    market_data = services["market-data"]
    env = environment(market_data)

    assert "deploy" not in market_data, "one process: a second would open a second ticker connection per account"
    assert market_data["restart"] == "unless-stopped"  # restarted when it fails (and after a reboot)
    assert env["ENGINE_LOG_FORMAT"] == "json" and env["ENGINE_METRICS_HOST"] == "0.0.0.0"
    assert env["ENGINE_INSTRUMENTS_CACHE_DIR"].startswith("/tmp/"), "the image's code is read-only to its user"
    assert "9466" in " ".join(market_data["healthcheck"]["test"])
