"""docker/: what can be checked without a Docker engine, a cloud account or a Kubernetes cluster.

Every YAML parses; the pins in docker/constraints.txt satisfy pyproject.toml and equal what the tests run with;
the images, cluster.yaml and rayjob.yaml name the same image and Ray version; cluster.yaml passes Ray's own
cluster-config schema; every `ray start` / `mlflow server` flag exists in the installed Ray / MLflow; the compose
stack publishes ports on 127.0.0.1 only, takes every secret from the environment, and mounts what the example
job expects.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
CORE_PINS = ("torch", "torchvision", "ray", "optuna", "mlflow")
EXAMPLE_JOB = "jobs/mobilenet_imagenet.yaml"
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load(name: str):
    return yaml.safe_load((DOCKER / name).read_text())


def pins() -> dict[str, Version]:
    out = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier per line ...
        assert spec.operator == "==", f"constraints.txt: {line!r} must be an exact pin (==)"  # ... and exact
        out[req.name.lower()] = Version(spec.version)
    return out


def pyproject_ranges() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [r for r in extra if not r.startswith("attnsearch")]
    out: dict[str, SpecifierSet] = {}
    for text in reqs:
        req = Requirement(text)
        out[req.name.lower()] = out.get(req.name.lower(), SpecifierSet()) & req.specifier
    return out


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def expected_tag() -> str:
    """Image tags name the project and the Ray inside: Ray refuses to join nodes of different versions."""
    return f"{project_version()}-ray{pins()['ray']}"


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` with ``env`` (defaults otherwise)."""
    env = env or {}

    def sub(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise KeyError(name)

    return _VAR_RE.sub(sub, value)


def env_example() -> dict[str, str]:
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def option_names(command) -> set[str]:
    return {opt for param in command.params for opt in param.opts}


def flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


# --------------------------------------------------------------------------------------------------- versions


def test_every_yaml_parses():
    names = sorted(p.name for p in DOCKER.glob("*.yaml"))
    assert {"compose.yaml", "cluster.yaml", "rayjob.yaml"} <= set(names)
    for name in names:
        assert isinstance(load(name), dict), name


def test_pins_satisfy_pyproject_and_match_the_tested_environment():
    pinned, ranges = pins(), pyproject_ranges()
    assert set(CORE_PINS) <= set(pinned)
    for name, version in pinned.items():
        if name in ranges:
            assert version in ranges[name], f"constraints.txt {name}=={version} is outside pyproject's {ranges[name]}"
    assert {"torch", "torchvision", "ray", "optuna", "mlflow"} <= set(ranges)
    # The image must hold what the tests ran with; a CPU wheel's local tag (+cpu) is not part of the version.
    for name in CORE_PINS:
        installed = Version(metadata.version(name))
        assert Version(installed.public) == pinned[name], (
            f"{name}: the tests run with {installed}, docker/constraints.txt pins {pinned[name]}; move them together"
        )


def test_images_and_cluster_configs_name_the_pinned_ray():
    tag, ray = expected_tag(), str(pins()["ray"])
    cluster_image = load("cluster.yaml")["docker"]["image"]
    assert cluster_image.endswith(f":{tag}")
    job = load("rayjob.yaml")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {cluster_image}
    compose = load("compose.yaml")
    for name in ("ray-head", "ray-gpu-worker"):
        image = interpolate(compose["services"][name]["image"])
        assert image == f"attnsearch:{tag}", (name, image)
    assert env_example()["ATTNSEARCH_IMAGE"] == f"attnsearch:{tag}"
    assert compose["services"]["mlflow"]["image"].endswith(f":{pins()['mlflow']}")
    assert f"attnsearch:{tag}" in (DOCKER / "Dockerfile").read_text()  # the build command in its header


# --------------------------------------------------------------------------------------------------- Dockerfiles


def dockerfile_lines(name: str) -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def readme_extras() -> str:
    match = re.search(r"pip install -e \"\.\[(\w+)\]\"", (ROOT / "README.md").read_text())
    assert match, "README.md: no `pip install -e \".[extras]\"` line"
    return match.group(1)


@pytest.mark.parametrize("name", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfiles_pin_their_bases_and_install_through_the_constraints(name):
    lines = dockerfile_lines(name)
    args = {m.group(1): m.group(2) for line in lines if (m := re.match(r"ARG (\w+)=(\S*)", line))}
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms
    for image in froms:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        repo, _, tag = resolved.rpartition(":")
        assert repo and tag and tag != "latest" and "latest" not in tag, f"{name}: unpinned base image {image}"
    assert "latest" not in (DOCKER / name).read_text().lower()
    installs = [line for line in lines if re.search(r"\bpip install\b", line)]
    assert installs
    for line in installs:
        assert "-c /etc/attnsearch/constraints.txt" in line, f"{name}: pip install without the constraints: {line}"
    # any version written into the Dockerfile itself must agree with the constraints
    pinned = pins()
    for line in installs:
        for pkg, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", line):
            assert Version(version) == pinned[pkg.lower()], f"{name}: {pkg}=={version} vs constraints"


def test_image_installs_the_project_like_the_readme():
    lines = dockerfile_lines("Dockerfile")
    extras = readme_extras()
    project_install = [line for line in lines if "pip install" in line and "/tmp/src[" in line]
    assert len(project_install) == 1 and f"/tmp/src[{extras}]" in project_install[0]
    assert '"ray[default]"' in project_install[0]  # the dashboard: the Jobs API server `submit` talks to
    torch_install = next(line for line in lines if "pip install" in line and "torch torchvision" in line)
    assert lines.index(torch_install) < lines.index(project_install[0])
    workdir = [line.split()[1] for line in lines if line.startswith("WORKDIR ")][-1]
    assert workdir == "/opt/attnsearch"
    assert "COPY --chown=ray:ray jobs ./jobs" in lines and "COPY --chown=ray:ray search_spaces ./search_spaces" in lines
    assert [line for line in lines if line.startswith("USER ")][-1] == "USER ray"


def test_everything_the_images_copy_exists_and_is_in_their_build_context():
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in dockerfile_lines("Dockerfile"):
        if line.startswith("COPY "):
            sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src in allowed, f"docker/Dockerfile copies {src}, which Dockerfile.dockerignore leaves out"
    context_ignored = (DOCKER / ".dockerignore").read_text()
    for line in dockerfile_lines("mlflow.Dockerfile"):
        if line.startswith("COPY "):
            for src in [w for w in line.split()[1:-1] if not w.startswith("--")]:
                assert (DOCKER / src).exists() and src not in context_ignored, src


# --------------------------------------------------------------------------------------------------- compose


def compose_services() -> dict:
    return load("compose.yaml")["services"]


def test_compose_stack_structure():
    compose = load("compose.yaml")
    services = compose["services"]
    assert set(services) == {"secrets", "postgres", "minio", "mlflow", "ray-head", "ray-gpu-worker"}
    for name, svc in services.items():
        assert svc.get("image"), f"{name}: no image"
        assert "latest" not in svc["image"], name
        if name == "secrets":  # a one-shot check: everything else waits for it to succeed
            continue
        assert svc["depends_on"]["secrets"] == {"condition": "service_completed_successfully"}, name
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith(("$", ".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    # MLflow: PostgreSQL for runs, S3 (MinIO) for artifacts, started after both are healthy
    mlflow = services["mlflow"]
    assert mlflow["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "minio": {"condition": "service_healthy"},
                                    "secrets": {"condition": "service_completed_successfully"}}
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["environment"]["POSTGRES_HOST"].startswith("postgres:")
    # GPUs on the workers only
    worker, head = services["ray-gpu-worker"], services["ray-head"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in head and "--num-gpus=0" in head["command"]
    assert "--head" in head["command"] and "--address=ray-head:6379" in worker["command"]
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"},
                                    "secrets": {"condition": "service_completed_successfully"}}


def test_compose_publishes_on_localhost_only():
    published = 0
    for name, svc in compose_services().items():
        for port in svc.get("ports", []):
            port = interpolate(port)
            assert isinstance(port, str) and port.count(":") == 2, f"{name}: {port!r} must name a host address"
            host = port.split(":")[0]
            assert host == "127.0.0.1", f"{name}: {port} binds to {host}"
            published += 1
    assert published >= 2  # MLflow and the Ray dashboard reach the host; PostgreSQL does not
    assert "ports" not in compose_services()["postgres"]
    assert env_example()["BIND_ADDRESS"] == "127.0.0.1"


def test_compose_secrets_come_from_the_environment():
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|KEY_ID|_KEY$", re.I)
    example = env_example()
    for name, svc in compose_services().items():
        for key, value in (svc.get("environment") or {}).items():
            if secretish.search(key):
                match = _VAR_RE.fullmatch(str(value))
                assert match and match.group(2) == ":?", (
                    f"{name}.{key}: a secret must be a required ${{VAR:?...}} reference, got {value!r}"
                )
    # every variable compose reads has a documented placeholder, and placeholders look like placeholders
    used = set(_VAR_RE.findall((DOCKER / "compose.yaml").read_text()))
    assert {name for name, _, _ in used} <= set(example)
    for key, value in example.items():
        if secretish.search(key):
            assert value.startswith("change-me"), f".env.example {key} must be a change-me placeholder"
    assert len(example["MLFLOW_ADMIN_PASSWORD"]) >= 12  # MLflow refuses shorter admin passwords


def test_credential_files_are_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("docker/.env", "docker/cluster.env"):
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert result.returncode == 0, f"{path} would be committed"
    for path in ("docker/.env.example", "docker/cluster.env.example"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 1


def test_compose_serves_the_example_job():
    """jobs/mobilenet_imagenet.yaml runs on this stack unchanged: its paths and its MLflow host exist there."""
    from attnsearch.config import load_job

    job = load_job(ROOT / EXAMPLE_JOB)
    services = compose_services()
    for name in ("ray-head", "ray-gpu-worker"):
        mounts = [interpolate(v).split(":")[1] for v in services[name]["volumes"]]
        assert any(job.ray.storage_path.startswith(m + "/") for m in mounts), (name, job.ray.storage_path)
        assert any(job.data.root.startswith(m + "/") for m in mounts), (name, job.data.root)
        assert "RAY_AUTH_TOKEN" in services[name]["environment"]
    # the driver (on the head) logs in with the non-admin account; the GPU workers get no MLflow login at all
    head_env, worker_env = services["ray-head"]["environment"], services["ray-gpu-worker"]["environment"]
    assert head_env["MLFLOW_TRACKING_USERNAME"].startswith("${MLFLOW_DRIVER_USERNAME:?")
    assert "MLFLOW_DRIVER_PASSWORD" in head_env["MLFLOW_TRACKING_PASSWORD"]
    assert not [key for key in worker_env if key.startswith("MLFLOW_")]
    assert "ADMIN" not in str(head_env)
    host = re.match(r"https?://([^:/]+)", job.tracking.uri).group(1)
    mlflow = services["mlflow"]
    assert host == "mlflow" or host in mlflow["networks"]["default"]["aliases"]
    assert host in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_compose_config_validates_with_docker_compose(tmp_path):
    """The Compose CLI's own validation, where one is installed (it needs no engine for `config`)."""
    env_file = tmp_path / "env"
    env_file.write_text((DOCKER / ".env.example").read_text())
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file), "config", "-q"]
    elif shutil.which("docker-compose"):
        # Compose v1 predates the top-level `name`; validate the rest.
        text = (DOCKER / "compose.yaml").read_text()
        assert text.count("\nname: attnsearch\n") == 1
        stripped = tmp_path / "compose.yaml"
        stripped.write_text(text.replace("\nname: attnsearch\n", "\n"))
        cmd = ["docker-compose", "-f", str(stripped), "--project-directory", str(DOCKER), "--env-file",
               str(env_file), "config", "-q"]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # the driver's login reaches the head only, never the GPU workers
    if cmd[0] == "docker-compose":
        shown = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=60)
        resolved = yaml.safe_load(shown.stdout)["services"]
        assert "MLFLOW_TRACKING_PASSWORD" in resolved["ray-head"]["environment"]
        assert not [k for k in resolved["ray-gpu-worker"]["environment"] if k.startswith("MLFLOW")]
    # and a missing secret is refused
    kept = [ln for ln in env_file.read_text().splitlines() if not ln.startswith("RAY_AUTH_TOKEN")]
    env_file.write_text("\n".join(kept))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "RAY_AUTH_TOKEN" in result.stderr + result.stdout


def good_secrets() -> dict[str, str]:
    """docker/.env.example with every placeholder replaced by a long random-looking secret."""
    return {key: (f"s3cr3t-{key.lower()}-" + "x" * 40 if value.startswith("change-me") else value)
            for key, value in env_example().items()}


def run_check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess:
    specs = compose_services()["secrets"]["command"]
    return subprocess.run(["sh", str(DOCKER / "check-secrets.sh"), *specs], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_the_stack_refuses_placeholder_and_short_secrets():
    secrets = compose_services()["secrets"]
    specs = dict(spec.split(":") for spec in secrets["command"])
    assert int(specs["RAY_AUTH_TOKEN"]) >= 32 and int(specs["MLFLOW_ADMIN_PASSWORD"]) >= 12
    assert set(specs) <= set(secrets["environment"]) and set(specs) <= set(env_example())
    # the published placeholders: refused, each variable named
    placeholders = run_check_secrets(env_example())
    assert placeholders.returncode == 1
    for name in specs:
        assert f"{name} is still the change-me placeholder" in placeholders.stderr, name
    # real secrets pass
    good = good_secrets()
    assert run_check_secrets(good).returncode == 0
    # one short or missing secret is enough to refuse
    short = run_check_secrets({**good, "RAY_AUTH_TOKEN": "abc123"})
    assert short.returncode == 1 and "RAY_AUTH_TOKEN is shorter than 32" in short.stderr
    assert "MLFLOW_ADMIN_PASSWORD" not in short.stderr
    missing = run_check_secrets({k: v for k, v in good.items() if k != "MLFLOW_ADMIN_PASSWORD"})
    assert missing.returncode == 1 and "MLFLOW_ADMIN_PASSWORD is not set" in missing.stderr


def test_mlflow_accounts_follow_the_env_file_on_every_start(tmp_path, monkeypatch):
    """docker/mlflow-users.py: the admin and the non-admin driver account get docker/.env's passwords each start
    (rotation is an edit of docker/.env), against MLflow's own auth store."""
    import importlib.util

    pytest.importorskip("flask_wtf")  # mlflow.server.auth needs MLflow's `auth` extra
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    ini = tmp_path / "auth.ini"
    ini.write_text((DOCKER / "mlflow_auth.ini").read_text().replace(
        "sqlite:////var/lib/mlflow-auth/basic_auth.db", f"sqlite:///{tmp_path}/auth.db"))
    spec = importlib.util.spec_from_file_location("_mlflow_users", DOCKER / "mlflow-users.py")
    users = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(users)
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "first-admin-password", "MLFLOW_DRIVER_USERNAME": "driver",
           "MLFLOW_DRIVER_PASSWORD": "first-driver-password"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert users.main() == 0
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{tmp_path}/auth.db")
    assert store.authenticate_user("admin", "first-admin-password")
    assert store.get_user("admin").is_admin and not store.get_user("driver").is_admin
    # rotation: a new password in docker/.env is the password after the next start, the old one no longer works
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "second-admin-password")
    monkeypatch.setenv("MLFLOW_DRIVER_PASSWORD", "second-driver-password")
    assert users.main() == 0
    assert store.authenticate_user("admin", "second-admin-password")
    assert not store.authenticate_user("admin", "first-admin-password")
    assert store.authenticate_user("driver", "second-driver-password")
    monkeypatch.setenv("MLFLOW_DRIVER_USERNAME", "admin")  # the driver must not be the admin
    assert users.main() == 1


def test_ray_and_mlflow_flags_exist_in_the_pinned_versions():
    from mlflow.cli import server as mlflow_server
    from ray.scripts.scripts import start as ray_start

    ray_flags = option_names(ray_start)
    services = compose_services()
    for name in ("ray-head", "ray-gpu-worker"):
        command = services[name]["command"]
        assert command[:2] == ["ray", "start"] and flags(command) <= ray_flags, name
    cluster = load("cluster.yaml")
    for cmd in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert flags(cmd.split("ray start", 1)[1].split()) <= ray_flags, cmd
    head_params = load("rayjob.yaml")["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert {f"--{k}" for k in head_params} <= ray_flags

    script = (DOCKER / "mlflow-entrypoint.sh").read_text()
    exec_line = re.sub(r"\\\n", " ", script.split("exec mlflow server", 1)[1])
    assert flags(exec_line.split()) <= option_names(mlflow_server)
    required = set(re.findall(r"\$\{(\w+):\?\}", script))
    assert required <= set(services["mlflow"]["environment"]), required - set(services["mlflow"]["environment"])
    if shutil.which("sh"):
        assert subprocess.run(["sh", "-n", str(DOCKER / "mlflow-entrypoint.sh")]).returncode == 0


def test_mlflow_auth_config_reads_with_the_pinned_mlflow(monkeypatch):
    import importlib.util

    import mlflow

    # mlflow.server.auth's package needs Flask-WTF (a server-only extra, in the MLflow image); its config reader
    # does not, so load that module alone.
    path = Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("_mlflow_auth_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    read_auth_config = module.read_auth_config
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(DOCKER / "mlflow_auth.ini"))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "a-long-enough-password")
    config = read_auth_config()
    assert config.database_uri.startswith("sqlite:////var/lib/mlflow-auth/")
    assert config.admin_password == "a-long-enough-password"  # from the environment, not the file
    assert "password" not in (DOCKER / "mlflow_auth.ini").read_text().split("[mlflow]", 1)[1].replace(
        "MLFLOW_AUTH_ADMIN_PASSWORD", "")


# --------------------------------------------------------------------------------------------------- ray up


def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 8  # a typo Ray's schema must catch
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(bad))


def test_cluster_yaml_keeps_the_dashboard_private_and_secrets_out():
    config = load("cluster.yaml")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU") == 0
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 for t in workers)
    for _target, source in config["file_mounts"].items():
        assert (ROOT / f"{source}.example").exists(), f"{source}: document it in {source}.example"
    assert not set(config["setup_commands"])  # everything is in the image


# --------------------------------------------------------------------------------------------------- KubeRay


def test_rayjob_runs_the_example_job_on_gpu_workers():
    from attnsearch.config import load_job

    doc = load("rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["entrypoint"] == f"attnsearch run {EXAMPLE_JOB}"
    job = load_job(ROOT / EXAMPLE_JOB)  # the job the entrypoint names is valid, space included
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["workingDir"] == "/opt/attnsearch"  # the image's WORKDIR, where jobs/ lives
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    env = {e["name"] for e in head["env"]}
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= env
    assert all("valueFrom" in e for e in head["env"] if "PASSWORD" in e["name"])
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    limits = worker["resources"]["limits"]
    assert float(limits["nvidia.com/gpu"]) >= job.resources.gpu > 0
    assert float(limits["cpu"]) >= job.resources.cpu
    assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"]
    for container in (head, worker):
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert any(job.ray.storage_path.startswith(m + "/") for m in mounts), mounts
        assert any(job.data.root == m or job.data.root.startswith(m + "/") for m in mounts), mounts
