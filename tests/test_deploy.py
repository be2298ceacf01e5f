"""The Dockerfile and deploy/: linted, validated, rendered, and run for real.

Fast tests lint the Dockerfile, validate the kustomize renderings (base and
overlays) against the Kubernetes schemas offline, lint deploy/ and check the
compose file, then check in Python that the pieces agree with each other and
with the server's own defaults. The slow tests build the image with podman
(no daemon, no registry), run it, push to it with the real client, stop it
with SIGTERM, and bring the compose file up to train the demo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import containers
from helpers.containers import ROOT, podman_env, require, run, tool

from adamax_ps.server.config import ServerConfig

DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
RENDERINGS = {"base": K8S, "large": K8S / "overlays" / "large"}
CHECKPOINT_DIR = "/var/lib/adamax-ps"
SERVICE_NAME = "adamax_ps.v1.ParameterServer"
DEFAULTS = ServerConfig()


def kubectl_env(tmp_path: Path) -> dict[str, str]:
    # A missing kubeconfig: kubectl must never reach for a cluster (or for a
    # test server of ours on 127.0.0.1:8080).
    return {**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")}


def render(folder: Path, tmp_path: Path) -> str:
    require("kubectl")
    return run(["kubectl", "kustomize", str(folder)], env=kubectl_env(tmp_path)).stdout


def documents(text: str) -> dict[tuple[str, str], dict]:
    """Rendered resources by (kind, name)."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for doc in yaml.safe_load_all(text)
        if doc
    }


def one(resources: dict, kind: str, name: str | None = None) -> dict:
    (found,) = [
        doc
        for (k, _), doc in resources.items()
        if k == kind and name in (None, doc["metadata"]["name"])
    ]
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "warning", DOCKERFILE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_slim_from_a_wheelhouse_and_runs_as_a_user():
    steps = dockerfile_instructions()
    values = lambda kind: [args for k, args in steps if k == kind]  # noqa: E731
    assert values("ARG")[0] == "BASE=python:3.11-slim"
    froms = values("FROM")
    assert len(froms) >= 2 and all(f.startswith("${BASE}") for f in froms)
    (install,) = [args for args in values("RUN") if "pip install" in args]
    assert "--no-index" in install and "--find-links" in install
    # A numeric user, so Kubernetes can check runAsNonRoot without a passwd.
    assert values("USER") == ["${UID}:${UID}"]
    assert "UID=10001" in values("ARG")
    env = " ".join(values("ENV"))
    assert f"ADAMAX_PS_CHECKPOINT_DIR={CHECKPOINT_DIR}" in env
    assert "NUMBA_CACHE_DIR=" in env
    assert values("VOLUME") == [f'["{CHECKPOINT_DIR}"]']
    assert values("EXPOSE") == [f"{DEFAULTS.grpc_port} {DEFAULTS.http_port}"]
    (healthcheck,) = values("HEALTHCHECK")
    assert healthcheck.endswith('CMD ["adamax-ps", "health"]')  # no curl needed
    assert values("ENTRYPOINT") == ['["adamax-ps"]']
    assert values("CMD") == ['["serve"]']
    # The build context is the wheelhouse alone.
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :] == ["*", "!build/wheelhouse/"]


# ------------------------------------------------------------------ manifests


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_kustomize_rendering_validates_strictly(name, tmp_path):
    if shutil.which("kubectl") is None:
        # Without kubectl: validate the base's complete resources, unrendered,
        # then skip (fail under CI=true) the rendering itself.
        files = [K8S / "base" / f for f in ("service.yaml", "statefulset.yaml")]
        files += [
            K8S / "base" / f
            for f in ("secret.yaml", "worker-job.yaml", "training-job.yaml")
        ]
        command = [tool("kubernetes-validate"), "--strict", "--quiet", *map(str, files)]
        run(command)
        require("kubectl")
    rendered = render(RENDERINGS[name], tmp_path)
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-"],
        input=rendered,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path):
    """A control: the strict validator would catch a misspelt field."""
    resources = documents(render(K8S, tmp_path))
    one(resources, "StatefulSet")["spec"]["replicaz"] = 2
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-"],
        input=yaml.safe_dump_all(resources.values()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "replicaz" in result.stdout + result.stderr


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_rendered_cluster_is_consistent(name, tmp_path):
    resources = documents(render(RENDERINGS[name], tmp_path))
    servers = one(resources, "StatefulSet")
    service = one(resources, "Service")
    job = one(resources, "Job", "ps-demo")
    training = one(resources, "Job", "ps-train")
    secret = one(resources, "Secret")
    pod = servers["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (config_name,) = [e["configMapRef"]["name"] for e in container["envFrom"]]
    settings = resources["ConfigMap", config_name]["data"]

    # One server per replica, each learning its index from its pod name.
    replicas = servers["spec"]["replicas"]
    assert int(settings["ADAMAX_PS_NUM_SERVERS"]) == replicas
    assert settings["ADAMAX_PS_SERVER_INDEX"] == "auto"
    ServerConfig.model_validate(
        {
            key.removeprefix("ADAMAX_PS_").lower(): value
            for key, value in settings.items()
            if key != "ADAMAX_PS_ADDRESS" and value != "auto"
        }
    )

    # Stable DNS: a headless Service named by serviceName selects the pods.
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == servers["spec"]["serviceName"]
    labels = servers["spec"]["template"]["metadata"]["labels"]
    assert servers["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert servers["spec"]["podManagementPolicy"] == "Parallel"

    # Ports and probes: gRPC health for readiness, /healthz for liveness.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    grpc_port, http_port = int(settings["ADAMAX_PS_GRPC_PORT"]), ports["http"]
    assert ports == {
        "grpc": grpc_port,
        "http": int(settings["ADAMAX_PS_HTTP_PORT"]),
        "transfer": int(settings["ADAMAX_PS_TRANSFER_PORT"]),  # peers' cut reads
    }
    assert (grpc_port, http_port) == (DEFAULTS.grpc_port, DEFAULTS.http_port)
    assert container["readinessProbe"]["grpc"] == {
        "port": grpc_port,
        "service": SERVICE_NAME,
    }
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"grpc", "http"}

    # Checkpoints on a volume per pod, with time to write the last one.
    (claim,) = servers["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == settings["ADAMAX_PS_CHECKPOINT_DIR"]
    assert settings["ADAMAX_PS_CHECKPOINT_DIR"] == CHECKPOINT_DIR
    grace = float(settings["ADAMAX_PS_SHUTDOWN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 60
    assert container["resources"]["requests"]["cpu"] == settings["ADAMAX_PS_SHARDS"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]

    # The token comes from the Secret, for servers and workers alike.
    (worker,) = job["spec"]["template"]["spec"]["containers"]
    (trainer,) = training["spec"]["template"]["spec"]["containers"]
    for env in (container["env"], worker["env"], trainer["env"]):
        (token,) = [e for e in env if e["name"] == "ADAMAX_PS_TOKEN"]
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]

    # The workers address server i as ps-i.<service>, every one, in order.
    (address,) = [e for e in worker["env"] if e["name"] == "ADAMAX_PS_ADDRESS"]
    assert address["valueFrom"]["configMapKeyRef"] == {
        "name": config_name,
        "key": "ADAMAX_PS_ADDRESS",
    }
    expected = ",".join(
        f"grpc://{servers['metadata']['name']}-{i}.{service['metadata']['name']}"
        f":{grpc_port}"
        for i in range(replicas)
    )
    assert settings["ADAMAX_PS_ADDRESS"] == expected
    args = worker["args"]
    assert args[:3] == ["demo", "--address", "$(ADAMAX_PS_ADDRESS)"]
    assert worker["image"] == container["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    # The training workers: one pod per rank, RANK from the completion index,
    # the servers and token from the same ConfigMap and Secret.
    spec = training["spec"]
    assert spec["completionMode"] == "Indexed"
    variables = {e["name"]: e for e in trainer["env"]}
    world = int(variables["WORLD_SIZE"]["value"])
    assert spec["completions"] == spec["parallelism"] == world
    assert variables["RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert variables["ADAMAX_PS_ADDRESS"] == address
    assert trainer["command"][-1] == "adamax_ps.examples.torch_recommender"
    assert trainer["image"].split(":")[0].endswith("adamax-ps-worker")
    assert trainer["image"].split(":")[1] == container["image"].split(":")[1]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_overlay_changes_the_shards_and_the_server_count_together(tmp_path):
    base, large = (documents(render(f, tmp_path)) for f in RENDERINGS.values())

    def facts(resources):
        settings = one(resources, "ConfigMap")["data"]
        return (
            one(resources, "StatefulSet")["spec"]["replicas"],
            settings["ADAMAX_PS_NUM_SERVERS"],
            settings["ADAMAX_PS_SHARDS"],
        )

    assert facts(base) == (2, "2", "2")
    assert facts(large) == (4, "4", "8")


def test_deploy_passes_yamllint():
    result = subprocess.run(
        [tool("yamllint"), "-s", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------- compose


def compose_config(tmp_path: Path) -> list[str]:
    require("docker-compose")
    return ["docker-compose", "--project-directory", str(tmp_path), "-f"]


def test_compose_file_validates(tmp_path):
    run([*compose_config(tmp_path), str(COMPOSE), "config", "-q"])


def test_compose_validation_rejects_a_misspelt_key(tmp_path):
    """A control: the validator would catch a misspelt key."""
    command = compose_config(tmp_path)
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE.read_text().replace("depends_on:", "depends_onn:"))
    result = subprocess.run(
        [*command, str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "depends_onn" in result.stderr


def test_compose_servers_and_workers_agree():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    servers = sorted(name for name in services if name.startswith("ps-"))
    assert servers == ["ps-0", "ps-1"]
    for index, name in enumerate(servers):
        server = services[name]
        env = server["environment"]
        assert env["ADAMAX_PS_SERVER_INDEX"] == str(index)
        assert env["ADAMAX_PS_NUM_SERVERS"] == str(len(servers))
        assert server["hostname"] == name
        assert all(port.startswith("127.0.0.1:") for port in server["ports"])
        assert [v.split(":")[1] for v in server["volumes"]] == [CHECKPOINT_DIR]
        assert "/readyz" in " ".join(server["healthcheck"]["test"])
    workers = services["workers"]
    command = workers["command"]
    assert command[:2] == ["demo", "--address"]
    assert command[2] == ",".join(
        f"grpc://{name}:{DEFAULTS.grpc_port}" for name in servers
    )
    assert set(workers["depends_on"]) == set(servers)
    assert "ADAMAX_PS_TOKEN" in workers["environment"]


# ------------------------------------------------------------ the real image


def test_the_debian_mirror_comes_from_the_apt_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.test/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.test/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://old.test/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://other.test/debian bookworm main\n"
    )
    ignored = tmp_path / "extra.list.disabled"
    ignored.write_text("deb http://ignored.test/debian bookworm main\n")
    mirror = containers.debian_mirror
    assert mirror([ignored, deb822, one_line]) == "http://mirror.test/debian"
    assert mirror([one_line, deb822]) == "http://other.test/debian"
    with pytest.raises(LookupError):
        mirror([ignored])


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> dict[str, str]:
    require("podman", "runc", "debootstrap", root=True)
    return podman_env(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def image(podman) -> str:
    """The Dockerfile built for real (the base image is kept between runs)."""
    started = time.monotonic()
    times = containers.build_image(podman)
    print(
        f"image {containers.IMAGE}: "
        + ", ".join(f"{part} {seconds:.1f} s" for part, seconds in times.items())
        + f", total {time.monotonic() - started:.1f} s"
    )
    return containers.IMAGE


def start_server(podman, image, name, volume, token, *extra) -> tuple[int, int]:
    grpc_port, http_port = containers.free_port(), containers.free_port()
    run(
        [
            "podman",
            "run",
            "--detach",
            "--name",
            name,
            "--publish",
            f"127.0.0.1:{grpc_port}:{DEFAULTS.grpc_port}",
            "--publish",
            f"127.0.0.1:{http_port}:{DEFAULTS.http_port}",
            "--volume",
            f"{volume}:{CHECKPOINT_DIR}",
            "--env",
            f"ADAMAX_PS_TOKEN={token}",
            *extra,
            image,
        ],
        env=podman,
    )
    try:
        containers.wait_ready(
            [f"http://127.0.0.1:{http_port}/readyz"],
            alive=containers.running([name], podman),
        )
    except (TimeoutError, RuntimeError) as e:
        raise AssertionError(f"{e}\n{containers.logs(name, podman)}") from None
    return grpc_port, http_port


def stop(podman, name) -> tuple[int, str]:
    """SIGTERM (the image's stop signal), then the exit code and the logs."""
    run(["podman", "stop", "--time", "60", name], env=podman, timeout=120)
    state = containers.inspect(name, podman)["State"]
    return state["ExitCode"], containers.logs(name, podman)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_serves_pushes_and_checkpoints_on_sigterm(podman, image):
    from adamax_ps.client import Adamax, connect

    suffix = uuid.uuid4().hex[:8]
    volume = f"adamax-ps-test-{suffix}"
    names = [f"adamax-ps-test-{suffix}-{k}" for k in range(2)]
    token = uuid.uuid4().hex
    run(["podman", "volume", "create", volume], env=podman)
    try:
        grpc_port, _ = start_server(podman, image, names[0], volume, token)
        assert run(["podman", "exec", names[0], "id", "-u"], env=podman).stdout == (
            "10001\n"
        )
        run(["podman", "healthcheck", "run", names[0]], env=podman)  # the HEALTHCHECK
        # The kernels compiled at build time load from the cache, as this user.
        debug = run(
            [
                "podman",
                "run",
                "--rm",
                "--env",
                "NUMBA_DEBUG_CACHE=1",
                "--entrypoint",
                "python",
                image,
                "-c",
                "import adamax_ps.server.kernels",
            ],
            env=podman,
        ).stdout
        assert "[cache] data loaded" in debug and "[cache] data saved" not in debug
        with connect(f"grpc://127.0.0.1:{grpc_port}", token=token) as cluster:
            w = cluster.variable("w", initial_value=np.ones((4, 2), np.float32))
            opt = Adamax(learning_rate=0.1, cluster=cluster)
            for _ in range(3):
                opt.apply_gradients([(np.ones((4, 2), np.float32), w)])
            assert int(opt.iterations.numpy()) == 3
            trained = w.numpy()
        assert np.all(trained < 1)

        code, logs = stop(podman, names[0])
        assert code == 0, logs
        match = re.search(r"adamax-ps final checkpoint (\S+)", logs)
        assert match, logs
        folder = Path(containers.inspect(volume, podman, "volume")["Mountpoint"])
        checkpoint = folder / Path(match[1]).relative_to(CHECKPOINT_DIR)
        assert (checkpoint / "manifest.json").is_file()

        # A new container on the same volume restores that checkpoint.
        grpc_port, _ = start_server(podman, image, names[1], volume, token)
        with connect(f"grpc://127.0.0.1:{grpc_port}", token=token) as cluster:
            w = cluster.variable("w", shape=(4, 2))
            assert w.numpy().tobytes() == trained.tobytes()
            opt = Adamax(learning_rate=0.1, cluster=cluster)
            assert int(opt.iterations.numpy()) == 3
        code, logs = stop(podman, names[1])
        assert code == 0, logs
    finally:
        for name in names:
            subprocess.run(
                ["podman", "rm", "--force", "--time", "0", name],
                env=podman,
                capture_output=True,
                timeout=120,
            )
        subprocess.run(
            ["podman", "volume", "rm", "--force", volume],
            env=podman,
            capture_output=True,
            timeout=120,
        )


def compose_container(project: str, service: str, env: dict[str, str]) -> str:
    """The id of a compose service's one container."""
    (container,) = run(
        [
            "podman",
            "ps",
            "--all",
            "--quiet",
            "--filter",
            f"label=io.podman.compose.project={project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ],
        env=env,
    ).stdout.split()
    return container


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_brings_up_two_servers_and_trains_the_demo(podman, image):
    project = f"adamax-ps-test-{uuid.uuid4().hex[:8]}"
    ports = {
        name: containers.free_port()
        for name in ("PS0_GRPC_PORT", "PS0_HTTP_PORT", "PS1_GRPC_PORT", "PS1_HTTP_PORT")
    }
    env = {
        **podman,
        **{k: str(v) for k, v in ports.items()},
        "ADAMAX_PS_IMAGE": image,
        "ADAMAX_PS_TOKEN": uuid.uuid4().hex,
    }
    compose = [tool("podman-compose"), "-p", project, "-f", str(COMPOSE)]
    try:
        run([*compose, "up", "-d", "ps-0", "ps-1"], env=env, timeout=300)
        servers = [compose_container(project, name, env) for name in ("ps-0", "ps-1")]
        try:
            containers.wait_ready(
                (
                    f"http://127.0.0.1:{ports[p]}/readyz"
                    for p in ("PS0_HTTP_PORT", "PS1_HTTP_PORT")
                ),
                alive=containers.running(servers, env),
            )
        except (TimeoutError, RuntimeError) as e:
            logs = "\n".join(containers.logs(c, env) for c in servers)
            raise AssertionError(f"{e}\n{logs}") from None

        # The workers as the compose file runs them, to completion.
        demo = run(
            [*compose, "run", "--rm", "--no-deps", "workers"], env=env, timeout=900
        )
        assert "held-out MSE" in demo.stdout, demo.stdout[-2000:]

        # SIGTERM: each server drains and writes its final checkpoint.
        run([*compose, "stop", "ps-0", "ps-1"], env=env, timeout=300)
        for container in servers:
            logs = containers.logs(container, env)
            assert containers.inspect(container, env)["State"]["ExitCode"] == 0, logs
            assert "adamax-ps final checkpoint" in logs
    finally:
        subprocess.run(
            [*compose, "down", "--volumes", "--timeout", "10"],
            env=env,
            capture_output=True,
            timeout=300,
        )
