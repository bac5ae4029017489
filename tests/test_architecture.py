"""The layers hold at run time: no import cycles, imports only downward, light imports stay light.

The graph is read from the source (every ``import`` anywhere in a module, in
functions and under ``TYPE_CHECKING`` too), so a cycle hidden by a late import
is still a cycle here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ollama_meter"

LAYERS: tuple[frozenset[str], ...] = (
    # plain data and helpers that import nothing of ours (but each other)
    frozenset(
        {
            "_version",
            "_environment",
            "_names",
            "_paths",
            "_kinds",
            "_jitter",
            "_lazy",
            "_forks",
            "_runtime",
            "_stops",
            "_causes",
            "_said",
            "_sources",
            "_urls",
            "_text",
            "errors",
            "records",
            "testing",
        }
    ),
    frozenset({"config", "periods", "_logging", "_reloaded", "upstream"}),
    frozenset({"ledger"}),
    frozenset({"pricing", "budgets"}),
    # outputs and readers of the ledger
    frozenset({"reports", "telemetry"}),
    frozenset({"meter"}),
    # entry points
    frozenset(
        {
            "__init__",
            "__main__",
            "_answers",
            "_client",
            "_managing",
            "_hooks",
            "_arguments",
            "_raised",
            "demo",
            "gateway",
            "cli",
        }
    ),
)
"""Lowest first. A part may import its own layer and the layers below, never one above."""

OUTPUTS = {
    "telemetry": {
        "_version",
        "_runtime",
        "_urls",
        "config",
        "errors",
        "_names",
        "records",
        "_forks",
        "_text",  # the one list of what a log reader acts on, for a collector's words
        "_jitter",  # ometer's own random numbers (span ids, an export's waits): a leaf
        "_causes",  # an exception's chain, walked as upstream walks it: a leaf
    }
}
"""Outputs the meter writes to: what each may import. Nothing they do reads back."""

THIRD_PARTY_HOMES = {
    "typer": {"cli"},
    "rich": {"cli"},
    "starlette": {"gateway"},
    "uvicorn": {"gateway", "cli"},  # `ometer serve` runs the gateway's app
    "sqlalchemy": {"ledger", "config", "_urls"},  # these two only parse the URL a setting gives
    "alembic": {"ledger"},
}
"""Libraries only one part of the package may import (SQL only in the ledger)."""

HEAVY = ("ollama", "httpx", "rich", "typer", "aiohttp", "starlette", "opentelemetry", "jinja2")
MAX_LINES = 450


def _part(module: str) -> str | None:
    """The part of the package ``module`` belongs to: a subpackage or a top-level module."""
    names = module.split(".")
    if names[0] != "ollama_meter":
        return None
    return names[1] if len(names) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module ``name`` imports, with its line: top level, in functions, for type checks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "ollama_meter":  # `from ollama_meter import x`: x may be a module
                for alias in node.names:
                    sub = f"ollama_meter.{alias.name}"
                    out.append((sub if sub in MODULES else target, node.lineno))
            else:
                out.append((target, node.lineno))
    return out


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
    for name, targets in IMPORTS.items():
        source = _part(name)
        for target, line in targets:
            part = _part(target)
            if source and part and part != source:
                edges[(source, part)].append(f"{name}:{line}")
    return edges


def _rank(part: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if part in layer:
            return rank
    raise AssertionError(f"{part} is in no layer of tests/test_architecture.py: place it")


def test_every_part_has_a_layer() -> None:
    parts = {_part(name) for name in MODULES}
    for part in parts:
        assert part is not None
        _rank(part)


def test_no_import_cycles_between_parts() -> None:
    graph: defaultdict[str, set[str]] = defaultdict(set)
    for source, target in _edges():
        graph[source].add(target)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_only_go_down_the_layers() -> None:
    upward = [
        f"{source} -> {target} ({', '.join(where[:3])})"
        for (source, target), where in sorted(_edges().items())
        if _rank(target) > _rank(source)
    ]
    assert upward == []


def test_outputs_never_read_back() -> None:
    wrong = [
        f"{source} -> {target} ({', '.join(where[:3])})"
        for (source, target), where in sorted(_edges().items())
        if source in OUTPUTS and target not in OUTPUTS[source]
    ]
    assert wrong == []


def test_libraries_stay_in_their_part() -> None:
    wrong = []
    for name, targets in IMPORTS.items():
        part = _part(name)
        for target, line in targets:
            library = target.split(".")[0]
            if library in THIRD_PARTY_HOMES and part not in THIRD_PARTY_HOMES[library]:
                wrong.append(f"{name}:{line} imports {target}")
    assert wrong == []


def test_no_module_over_the_line_limit() -> None:
    long = {
        str(path.relative_to(PACKAGE)): count
        for path in MODULES.values()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_package_is_installed() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages <= listed


@pytest.mark.parametrize(
    "module",
    ["ollama_meter", "ollama_meter.ledger", "ollama_meter.pricing", "ollama_meter.records"],
)
def test_importing_the_ledger_or_pricing_loads_no_client_web_or_terminal_library(
    module: str,
) -> None:
    """The import-time promise: reading the ledger or prices never pays for HTTP, the CLI or OTel."""
    code = (
        f"import sys, {module}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = set(done.stdout.split())
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


NOT_FOR_HELP = (
    "ollama", "httpx", "aiohttp", "starlette", "opentelemetry", "jinja2", "sqlalchemy", "alembic",
    "pydantic_settings", "msgspec",
)  # fmt: skip
"""What commands load when they run; help, built from every command's options, needs none."""


def test_help_loads_no_database_settings_or_client_library() -> None:
    """``ometer --help`` builds every command's options and loads none of what the commands do."""
    code = (
        "import sys\nfrom ollama_meter.cli import main\nsys.argv = ['ometer', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "Usage" in done.stdout
    loaded = set(done.stderr.split())
    assert loaded.isdisjoint(NOT_FOR_HELP), sorted(loaded & set(NOT_FOR_HELP))


def test_a_reading_command_loads_no_metering_sequence_or_client(tmp_path: Path) -> None:
    """``ometer log`` opens the configured ledger through the meter's wiring and loads no more of
    it; nor SQLAlchemy's ORM, which no query uses (loading it took a sixth of the start-up),
    nor msgspec, which reads export, spool and journal lines (none to read here), nor the
    ledger's sums, keys and limits."""
    code = (
        "import sys\nfrom ollama_meter.cli import main\nsys.argv = ['ometer', 'log']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(' '.join(sorted(sys.modules)))"
    )
    from ollama_meter.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(url).dispose()  # a ledger with no spans: log reads it, as it refuses one not there
    env = {**os.environ, "OMETER_DB_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    assert "no spans yet" in done.stdout
    loaded = set(done.stderr.split())
    assert "ollama_meter.meter._wiring" in loaded
    unwanted = {"ollama_meter.meter._meter", "ollama_meter.budgets", "ollama", "httpx", "aiohttp"}
    unwanted |= {"sqlalchemy.orm", "msgspec"}
    unwanted |= {f"ollama_meter.ledger.{m}" for m in ("_aggregate", "_timings", "_keys", "_limits")}
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)


def test_a_report_as_a_table_loads_no_line_reader(tmp_path: Path) -> None:
    """``ometer report`` shown as a table loads neither the CSV and JSON writers nor, through
    them, msgspec (the ledger's export lines): only ``--format csv`` or ``json`` needs them."""
    code = (
        "import sys\nfrom ollama_meter.cli import main\nsys.argv = ['ometer', 'report']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(' '.join(sorted(sys.modules)))"
    )
    from ollama_meter.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(url).dispose()
    env = {**os.environ, "OMETER_DB_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    assert "no calls in this period" in done.stdout
    loaded = set(done.stderr.split())
    assert "ollama_meter.reports._spend" in loaded
    unwanted = {"ollama_meter.reports._render", "msgspec"}
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)


TEMPLATE_READER = {"ollama_meter.budgets._template", "ollama_meter.budgets._gotemplate"}
"""What reads a model's Go template: only a call under a hard budget needs it (its admission)."""


@pytest.mark.parametrize(
    "module", ["ollama_meter.meter._meter", "ollama_meter._client", "ollama_meter.gateway._app"]
)
def test_the_metering_sequence_loads_no_template_reader(module: str) -> None:
    """The meter, the Python API and the gateway load the Go-template reader when a hard budget
    first asks a model's template, not on import: a call no hard budget covers never uses it."""
    code = f"import sys, {module}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = set(done.stdout.split())
    assert module in loaded
    assert loaded.isdisjoint(TEMPLATE_READER), sorted(loaded & TEMPLATE_READER)
