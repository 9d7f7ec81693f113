"""The module map holds: web-side modules stay light, and the Redis layout is documented."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import clipia_tasks
import clipia_tasks.record as record
from clipia_tasks.record import KEY_PREFIXES, ChainField, Field

PACKAGE = Path(clipia_tasks.__file__).parent
ROOT = PACKAGE.parent
#: Modules a web process imports to enqueue, read state or take webhooks.
WEB_SIDE = ["clipia_tasks.state", "clipia_tasks.webhooks", "clipia_tasks.nouns",
            "clipia_tasks.contrib.django", "clipia_tasks.contrib.flask",
            "clipia_tasks.contrib.starlette"]
#: What a web-side module must never load, directly or through another module.
WORKER_ONLY = {"clipia_tasks.poller", "clipia_tasks.client", "clipia_tasks.policy"}


def _path(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str) -> set[str]:
    """Every clipia_tasks module ``module`` imports, at module level or inside functions."""
    path = _path(module)
    assert path is not None, module
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("clipia_tasks"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("clipia_tasks"):
                continue
            found.add(target)
            # ``from . import x`` / ``from .record import store``: x may be a module.
            found.update(f"{target}.{a.name}" for a in node.names
                         if _path(f"{target}.{a.name}") is not None)
    return {m for m in found if m != "clipia_tasks" and _path(m) is not None}


def _closure(module: str) -> dict[str, str]:
    """Every package module reachable from ``module``, with the module that imported it."""
    seen: dict[str, str] = {module: ""}
    todo = [module]
    while todo:
        current = todo.pop()
        for imported in _imports(current):
            if imported not in seen:
                seen[imported] = current
                todo.append(imported)
    return seen


@pytest.mark.parametrize("module", WEB_SIDE)
def test_web_side_modules_never_import_the_poller_the_client_or_the_policy(module: str) -> None:
    reached = _closure(module)
    bad = sorted(WORKER_ONLY & set(reached))
    chains = [f"{m} (imported by {reached[m]})" for m in bad]
    assert not bad, f"{module} loads worker-only modules: {chains}"


def test_the_import_check_sees_imports_inside_functions() -> None:
    # The tasks module imports the poller: the check must find it, or it proves nothing.
    assert "clipia_tasks.poller" in _closure("clipia_tasks.tasks")
    assert "clipia_tasks.client" in _closure("clipia_tasks.submit")


def _record_doc() -> str:
    return record.__doc__ or ""


def _architecture_doc() -> str:
    return (ROOT / "docs" / "architecture.md").read_text()


@pytest.mark.parametrize("prefix", KEY_PREFIXES)
def test_every_key_prefix_is_in_the_layout_tables(prefix: str) -> None:
    assert prefix in _architecture_doc(), f"{prefix} missing from docs/architecture.md"
    assert prefix in _record_doc(), f"{prefix} missing from the record package docstring"


@pytest.mark.parametrize("name", [*Field, *ChainField], ids=str)
def test_every_record_field_is_in_the_layout_tables(name: str) -> None:
    cell = f"``{name}<task_id>``" if name.endswith(":") else f"``{name}``"
    assert cell in _record_doc(), f"{cell} missing from the record package docstring"
    assert name in _architecture_doc(), f"{name} missing from docs/architecture.md"


def test_every_lua_script_documents_its_keys_and_is_used() -> None:
    store_py = (PACKAGE / "record" / "store.py").read_text()
    scripts = sorted((PACKAGE / "record" / "lua").glob("*.lua"))
    assert scripts
    for script in scripts:
        header = script.read_text().splitlines()[0]
        assert header.startswith(f"-- {script.stem}:"), script.name
        assert "KEYS[1]" in script.read_text(), script.name
        assert f'_lua("{script.stem}")' in store_py, f"{script.name} is never loaded"


def test_no_module_outside_the_record_package_names_a_key_or_a_per_chain_field() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "record" in path.relative_to(PACKAGE).parts[:1]:
            continue
        text = path.read_text()
        for needle in (*KEY_PREFIXES, *(f'"{c.value}' for c in ChainField),
                       *(f"f\"{c.value}" for c in ChainField)):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_the_module_map_in_the_docs_lists_every_module() -> None:
    doc = _architecture_doc()
    modules = [p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")
               if "simulator" not in p.parts and p.name != "_version.py"]
    missing = [m for m in modules if m.removeprefix("clipia_tasks/") not in doc]
    assert not missing, f"docs/architecture.md does not mention {missing}"
