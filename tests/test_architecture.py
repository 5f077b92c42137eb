"""The package's architecture contract, checked on the source (no extra dependency).

- The core (every module but the napari adapters) never imports Qt, napari, magicgui
  or the adapters (`_widgets/`, `_reader.py`, `_writer.py`, `_sample_data.py`), neither
  at module level nor inside a function, except in the GUI entry points listed in
  `GUI_ENTRY_POINTS` (each with its reason).
- The npe2 adapters (reader, writer, sample data) never import `_widgets`.
- Inside a package split into rooms (`train/`; the parts of the dock's `Session`), a
  module never imports one of a higher room (`PACKAGE_ROOMS`).
- The import graph among the package's modules has no cycle: module-level imports, and
  module-level plus function-level imports.
- Each import contract (`IMPORT_CONTRACTS`) holds in a fresh interpreter: `import
  napari_cryossl` loads none of its modules, numpy, torch or Qt; the core and the public
  API load no Qt or napari; the file, annotation, extraction and picking modules and
  `cryossl --help` load no torch; the npe2 adapters load neither the dock nor torch, and
  the dock's module no torch. (Building the dock in a viewer is checked in
  `tests/widgets/test_dock_imports.py`.)
- docs/api.md and docs/architecture.md's module map agree with the code.

The imports are read with `ast` from the files of the `napari_cryossl` that Python
imports, so the check follows the code under test.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import napari_cryossl

PACKAGE = "napari_cryossl"
PACKAGE_DIR = Path(napari_cryossl.__file__).resolve().parent

#: Top-level packages of the GUI: Qt bindings, napari and what is built on them.
GUI_PACKAGES = frozenset(
    {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy"}
)
#: The napari-facing modules of the package: the only ones that may import the GUI.
ADAPTERS = (
    f"{PACKAGE}._widgets",
    f"{PACKAGE}._reader",
    f"{PACKAGE}._writer",
    f"{PACKAGE}._sample_data",
)
#: The adapters that npe2 imports on its own (opening a file, saving a layer, sample
#: data); they must work without the dock widgets.
NPE2_ADAPTERS = (f"{PACKAGE}._reader", f"{PACKAGE}._writer", f"{PACKAGE}._sample_data")
#: Core functions that open napari on purpose, with the reason. Nothing else in the
#: core may import the GUI, not even inside a function.
GUI_ENTRY_POINTS = {
    (f"{PACKAGE}.cli.demo", "open_in_napari"): (
        "`cryossl demo --gui` (and its real-viewer test) opens the workflow dock on the "
        "demo's session; napari is imported only when it is called"
    ),
    (f"{PACKAGE}.cli.demo", "_show_in_napari"): (
        "`cryossl demo --gui` runs napari's event loop after `open_in_napari`; napari "
        "is imported only when that flag is given"
    ),
}
#: Modules that are not imported to check them (running `__main__` would start the CLI).
NOT_IMPORTED = (f"{PACKAGE}.__main__",)


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen in the source."""

    importer: str  # dotted name of the importing module
    target: str  # dotted name of the imported module
    line: int
    function: str | None  # qualified name of the enclosing function; None at module level
    type_checking: bool  # inside `if TYPE_CHECKING:` (never executed)

    def where(self) -> str:
        place = f"in {self.function}()" if self.function else "at module level"
        return f"{self.importer} line {self.line} ({place}) imports {self.target}"


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _is_adapter(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ADAPTERS)


def _resolve(importer: str, level: int, module: str | None) -> str:
    """Absolute name of `from <level dots><module> import ...` inside `importer`."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_of(module: str) -> list[Import]:
    """Every import in a module's source, with where it sits."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    found: list[Import] = []

    def visit(node: ast.AST, scope: list[str], in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_scope, child_in_function, child_tc = scope, in_function, type_checking
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                child_scope = [*scope, child.name]
                child_in_function = in_function or not isinstance(child, ast.ClassDef)
            elif isinstance(child, ast.Lambda):
                child_scope, child_in_function = [*scope, "<lambda>"], True
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                child_tc = True
            function = ".".join(child_scope) if child_in_function else None
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, alias.name, child.lineno, function, child_tc))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, child.level, child.module)
                found.append(Import(module, target, child.lineno, function, child_tc))
                for alias in child.names:  # `from package import submodule`
                    sub = f"{target}.{alias.name}"
                    if sub in MODULES:
                        found.append(Import(module, sub, child.lineno, function, child_tc))
            visit(child, child_scope, child_in_function, child_tc)

    visit(tree, [], False, False)
    return found


IMPORTS = {module: _imports_of(module) for module in MODULES}


def _is_gui_target(target: str) -> bool:
    return target.split(".")[0] in GUI_PACKAGES or (
        target.startswith(PACKAGE + ".") and _is_adapter(target)
    )


# --------------------------------------------------------------------------- layers


def test_the_package_is_found_and_split_into_core_and_adapters():
    core = [m for m in MODULES if not _is_adapter(m)]
    adapters = [m for m in MODULES if _is_adapter(m)]
    for name in ("io", "train", "analysis.predict", "cli", "base.status", "particles.loader"):
        assert f"{PACKAGE}.{name}" in core
    for name in ADAPTERS:
        assert any(m == name or m.startswith(name + ".") for m in adapters), name


#: The package's layers, bottom to top. A module imports only from its own subpackage or
#: from a lower layer, at module level or inside a function, type-only imports included
#: (the GUI entry points of `GUI_ENTRY_POINTS` may reach the dock, on purpose).
LAYERS = (
    ("io", "base"),  # files; the options and the progress type (standard library only)
    ("simulate", "nn"),  # ground truth; networks, checkpoints, devices
    ("particles",),  # annotations, particle sets and boxes, picking
    ("train", "analysis"),  # the training loops; predictions, saliency, the population
    ("ops",),  # one operation per user action
    ("_reader", "_writer"),  # npe2 hooks
    ("cli", "_sample_data"),  # the command line (and the demo); napari's sample data
    ("_widgets", "__main__"),  # the dock; `python -m napari_cryossl`
)
#: Modules that may sit at the top of the package: the entry points.
ENTRY_POINTS = ("__init__", "__main__", "_reader", "_writer", "_sample_data")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)


def test_every_module_but_the_entry_points_sits_in_a_subpackage():
    top = sorted(p.stem for p in PACKAGE_DIR.glob("*.py"))
    assert set(top) <= set(ENTRY_POINTS), f"modules outside a subpackage: {top}"
    for module in MODULES:
        if module != PACKAGE and module.count(".") >= 1:
            assert _layer(module) is not None, f"{module}: in no layer of LAYERS"


def test_every_import_points_down_the_layers():
    offences = []
    for module, imports in IMPORTS.items():
        own = module.split(".")[1] if module.count(".") else None
        for imp in imports:
            target = _layer(imp.target)
            if target is None or imp.target.split(".")[1] == own:
                continue
            if (module, (imp.function or "").split(".")[0]) in GUI_ENTRY_POINTS:
                continue
            if target >= _layer(module):
                offences.append(imp.where())
    assert not offences, "imports that do not point down the layers:\n  " + "\n  ".join(
        offences
    )


def test_the_layer_check_catches_an_import_upwards():
    """The check above can fail: an import of the dock from io is an offence."""
    assert _layer(f"{PACKAGE}._widgets.main") > _layer(f"{PACKAGE}.io.mrc")
    assert _layer(f"{PACKAGE}.ops.pick") > _layer(f"{PACKAGE}.particles.picking")


def test_the_core_never_imports_the_gui():
    """No Qt, napari, magicgui or adapter import in the core, even inside a function."""
    offences = []
    for module, imports in IMPORTS.items():
        if _is_adapter(module):
            continue
        for imp in imports:
            if not _is_gui_target(imp.target):
                continue
            if imp.function is not None and (module, imp.function) in GUI_ENTRY_POINTS:
                continue
            offences.append(imp.where())
    assert not offences, (
        "the GUI-free core imports the GUI (move the code into _widgets/ or the npe2 "
        "adapters, or, for a function that exists to open napari, list it in "
        "GUI_ENTRY_POINTS with its reason):\n  " + "\n  ".join(offences)
    )


def test_gui_entry_points_exist_and_are_the_only_gui_code_in_their_module():
    """Each listed exception is a real function that imports the GUI (no stale entries)."""
    for (module, function), reason in GUI_ENTRY_POINTS.items():
        assert reason
        assert module in MODULES, f"GUI_ENTRY_POINTS names a missing module {module}"
        gui = [i for i in IMPORTS[module] if i.function == function and _is_gui_target(i.target)]
        assert gui, (
            f"{module}.{function} no longer imports the GUI: remove it from GUI_ENTRY_POINTS"
        )


def test_npe2_adapters_do_not_import_the_widgets():
    """npe2 imports the reader, writer and sample data without the dock widgets."""
    widgets = f"{PACKAGE}._widgets"
    offences = [
        imp.where()
        for module in MODULES
        if any(module == a for a in NPE2_ADAPTERS)
        for imp in IMPORTS[module]
        if imp.target == widgets or imp.target.startswith(widgets + ".")
    ]
    assert not offences, "npe2 adapters import _widgets:\n  " + "\n  ".join(offences)


#: Rooms inside a package, bottom to top: a listed module imports listed modules of its
#: own room or below, never one above (`train.loop` never imports `train.finetune`; the
#: parts of the dock's `Session` never import `_session`, which composes them). A
#: package's modules also never import the package itself (its `__init__` imports them).
#: `complete`: every module of the package must be placed in a room.
PACKAGE_ROOMS = {
    f"{PACKAGE}.train": {
        "rooms": (
            ("config", "labels", "checkpoints", "calibration", "semi_supervised"),
            ("loop",),
            ("pretrain", "finetune"),
        ),
        "complete": True,
    },
    f"{PACKAGE}._widgets": {
        "rooms": (
            ("_style", "_worker_runner", "_click_labelling"),
            ("_layer_sync",),
            ("_session",),
        ),
        "complete": False,
    },
}


def test_modules_inside_a_package_import_only_their_room_or_below():
    offences = []
    for package, spec in PACKAGE_ROOMS.items():
        room_of = {
            f"{package}.{name}": level
            for level, room in enumerate(spec["rooms"])
            for name in room
        }
        for module in room_of:
            assert module in MODULES, f"PACKAGE_ROOMS names a missing module {module}"
        if spec["complete"]:
            unplaced = [m for m in MODULES if m.startswith(package + ".") and m not in room_of]
            assert not unplaced, f"place these modules in PACKAGE_ROOMS[{package!r}]: {unplaced}"
        for module, level in room_of.items():
            for imp in IMPORTS[module]:
                if imp.type_checking:
                    continue
                if imp.target == package and spec["complete"]:
                    offences.append(imp.where() + " (its own package)")
                elif room_of.get(imp.target, -1) > level:
                    offences.append(imp.where() + " (a room above)")
    assert not offences, "imports against the rooms of a package:\n  " + "\n  ".join(offences)


# --------------------------------------------------------------------------- cycles


def _graph(*, function_level: bool) -> dict[str, dict[str, Import]]:
    """module -> {imported package module: the first import of it} (runtime imports only)."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in MODULES}
    for module, imports in IMPORTS.items():
        for imp in imports:
            if imp.type_checking or (imp.function is not None and not function_level):
                continue
            if imp.target in MODULES and imp.target != module:
                graph[module].setdefault(imp.target, imp)
    return graph


def _cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (as a closed path of modules) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # Shortest way back to `start` inside the component (breadth-first).
        parents: dict[str, str] = {}
        frontier = [start]
        end = None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w not in members:
                        continue
                    if w == start:
                        end = v
                        break
                    if w not in parents:
                        parents[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(parents[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict[str, Import]]) -> str:
    steps = [graph[a][b].where() for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def test_no_import_cycle_at_module_level():
    graph = _graph(function_level=False)
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module-level imports):\n  " + "\n  ".join(
        _describe(c, graph) for c in cycles
    )


def test_no_import_cycle_including_imports_inside_functions():
    graph = _graph(function_level=True)
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module- and function-level imports):\n  " + "\n  ".join(
        _describe(c, graph) for c in cycles
    )


def test_the_cycle_finder_finds_and_prints_a_cycle():
    """The checks above can fail: a made-up graph with a cycle is reported as one."""
    a, b, c = (f"{PACKAGE}.{n}" for n in "abc")
    graph = {
        a: {b: Import(a, b, 1, None, False)},
        b: {c: Import(b, c, 2, "f", False)},
        c: {a: Import(c, a, 3, None, False)},
    }
    (cycle,) = _cycles(graph)
    assert cycle == [a, b, c, a]
    text = _describe(cycle, graph)
    assert "napari_cryossl.b line 2 (in f()) imports napari_cryossl.c" in text


# --------------------------------------------------------------------------- runtime


def _core_modules() -> list[str]:
    return [m for m in MODULES if not _is_adapter(m) and m not in NOT_IMPORTED]


def _run_check(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


#: The training stack: slow to import (seconds), needed only once work starts.
TRAINING_STACK = ("torch", "lightly", "kornia", "monai")


@dataclass(frozen=True)
class ImportContract:
    """What a fresh interpreter must not have loaded after running `code`."""

    code: str  # statements run in a fresh interpreter
    forbidden: tuple[str, ...]  # modules with their submodules; "pkg." = submodules only
    why: str
    needs: str | None = None  # a package the case needs (skipped without it)


IMPORT_CONTRACTS = {
    "package": ImportContract(
        f"import {PACKAGE}",
        (f"{PACKAGE}.", "numpy", "pandas", *TRAINING_STACK, *sorted(GUI_PACKAGES)),
        "`import napari_cryossl` is instant: the public API imports its modules lazily",
    ),
    "core and public API": ImportContract(
        "\n".join(
            [
                f"import importlib, {PACKAGE}",
                f"for name in {_core_modules()!r}:",
                "    importlib.import_module(name)",
                f"for name in {PACKAGE}.__all__:",
                f"    getattr({PACKAGE}, name)",
            ]
        ),
        (*sorted(GUI_PACKAGES), f"{PACKAGE}._widgets"),
        "the core runs without Qt and napari (scripts, the CLI, clusters)",
    ),
    "torch-free core": ImportContract(
        f"import {PACKAGE}.io, {PACKAGE}.particles.annotations, {PACKAGE}.particles.dataset, "
        f"{PACKAGE}.particles.extract, {PACKAGE}.particles.picking",
        (*TRAINING_STACK, *sorted(GUI_PACKAGES)),
        "reading files, annotating, extracting and picking do not pay for torch",
    ),
    "command-line help": ImportContract(
        f"from {PACKAGE}.cli import build_parser\nbuild_parser().format_help()",
        (*TRAINING_STACK, *sorted(GUI_PACKAGES)),
        "`cryossl --help` answers at once",
    ),
    "npe2 adapters": ImportContract(
        f"import {', '.join(NPE2_ADAPTERS)}",
        (f"{PACKAGE}._widgets", *TRAINING_STACK),
        "napari opens a file, saves a layer or loads the sample without the dock or torch",
    ),
    "dock module": ImportContract(
        f"import {PACKAGE}._widgets.main",
        TRAINING_STACK,
        "napari's plugin discovery and the dock do not pay for torch (it is warmed up in "
        "the background when the Pretraining section opens)",
        needs="napari",
    ),
}

_LOADED = """
import sys
forbidden = {forbidden!r}
loaded = sorted(
    m for m in sys.modules
    if any(m.startswith(f) if f.endswith(".") else m == f or m.startswith(f + ".")
           for f in forbidden)
)
print("LOADED:", ", ".join(loaded[:20]))
sys.exit(1 if loaded else 0)
"""


def _check_contract(contract: ImportContract) -> subprocess.CompletedProcess:
    return _run_check(contract.code + "\n" + _LOADED.format(forbidden=contract.forbidden))


@pytest.mark.parametrize("case", IMPORT_CONTRACTS)
def test_an_import_loads_only_what_it_needs(case):
    """Each case runs in a fresh interpreter and lists what it loaded that it must not."""
    contract = IMPORT_CONTRACTS[case]
    if contract.needs:
        pytest.importorskip(contract.needs)
    result = _check_contract(contract)
    assert result.returncode == 0, (
        f"{case}: {contract.why}, but it loaded what it must not:\n"
        f"{result.stdout}{result.stderr[-3000:]}"
    )


def test_the_import_check_reports_what_was_loaded():
    """The check above can fail: a forbidden module that gets imported is reported."""
    result = _check_contract(ImportContract("import json.decoder", ("json",), "a control"))
    assert result.returncode == 1
    assert "json.decoder" in result.stdout


# --------------------------------------------------------------------------- public API


def test_the_public_api_is_lazy_and_complete():
    """Every name in `__all__` resolves to the object of the module that defines it."""
    import importlib

    assert len(set(napari_cryossl.__all__)) == len(napari_cryossl.__all__)
    for name in napari_cryossl.__all__:
        value = getattr(napari_cryossl, name)
        if name.startswith("__"):
            continue
        module = importlib.import_module(f"{PACKAGE}.{napari_cryossl._API[name]}")
        assert getattr(module, name) is value, name
        assert name in dir(napari_cryossl)
    # The prediction module keeps its name (the package does not shadow it).
    import napari_cryossl.analysis.predict as predict_module

    assert napari_cryossl.analysis.predict is predict_module
    try:
        napari_cryossl.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("unknown names must raise AttributeError")


def test_no_public_name_hides_a_submodule():
    """No name of the lazy API hides a submodule (`from napari_cryossl.particles import annotations`
    gives the module), checked in a fresh interpreter where no submodule is imported yet."""
    submodules = sorted({m.split(".")[1] for m in MODULES if m.count(".") >= 1})
    code = (
        "import sys, types, napari_cryossl\n"
        f"hidden = [m for m in {submodules!r} if not isinstance("
        "getattr(napari_cryossl, m, types), types.ModuleType)]\n"
        "print('NAMES HIDING A SUBMODULE:', hidden)\n"
        "sys.exit(1 if hidden else 0)\n"
    )
    result = _run_check(code)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- docs/api.md

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
_REFERENCE = re.compile(r"\bnapari_cryossl(?:\.[A-Za-z_]\w*)+")
_CALL = re.compile(r"^(?:class |@dataclass )?([A-Za-z_][\w.]*)\(")


def _resolve_reference(dotted: str):
    """The object a dotted `napari_cryossl.…` name refers to (importing modules as needed)."""
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every `## ` section."""
    parts = re.split(r"^## (.*)$", text, flags=re.MULTILINE)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _split_arguments(text: str) -> list[str]:
    """Top-level comma-separated pieces of an argument list (brackets and quotes kept)."""
    pieces, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(current)
            current = ""
            continue
        current += ch
    pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _documented_calls(body: str):
    """(span, dotted name, argument names or None) for every `name(...)` code span."""
    for span in re.findall(r"`([^`]+)`", body):
        match = _CALL.match(span.strip())
        if not match:
            continue
        is_class_statement = span.strip().startswith("class ")
        start = match.end()
        depth, end = 1, None
        for i in range(start, len(span.strip())):
            ch = span.strip()[i]
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                end = i
                break
        names = None
        if end is not None and not is_class_statement:
            names = []
            for piece in _split_arguments(span.strip()[start:end]):
                ident = re.match(r"^\*{0,2}([A-Za-z_]\w*)", piece)
                if ident:
                    names.append(ident.group(1))
        yield span, match.group(1), names


def _candidates(dotted: str, modules: list):
    """Objects `dotted` may name in a section about `modules` (functions, classes, methods)."""
    import importlib

    head, *rest = dotted.split(".")
    roots = [getattr(m, head) for m in modules if hasattr(m, head)]
    if f"{PACKAGE}.{head}" in MODULES:  # `train.run`
        roots.append(importlib.import_module(f"{PACKAGE}.{head}"))
    roots += [m for m in modules if m.__name__.rsplit(".", 1)[-1] == head]  # `devices.describe`
    if not roots and not rest:  # a method named after its class's bullet: `load(indices)`
        for m in modules:
            for value in vars(m).values():
                if (
                    isinstance(value, type)
                    and (
                        value.__module__ == m.__name__  # defined in the module or, for a
                        or value.__module__.startswith(m.__name__ + ".")  # package, below it
                    )
                    and hasattr(value, head)
                ):
                    roots.append(getattr(value, head))
    found = []
    for root in roots:
        obj = root
        try:
            for attr in rest:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        found.append(obj)
    return found


def _accepts(obj, names: list[str]) -> bool:
    import inspect

    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return True  # a builtin without a signature: nothing to compare
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True  # takes any keyword
    return all(n in params for n in names)


def test_docs_api_lists_every_public_name():
    text = API_DOC.read_text(encoding="utf-8")
    referenced = set(_REFERENCE.findall(text))
    missing = [n for n in napari_cryossl.__all__ if f"{PACKAGE}.{n}" not in referenced]
    assert not missing, f"docs/api.md does not list napari_cryossl.{{{', '.join(missing)}}}"


def test_docs_api_references_resolve():
    """Every `napari_cryossl.X` in docs/api.md is an importable module or attribute."""
    text = API_DOC.read_text(encoding="utf-8")
    broken = []
    for ref in sorted(set(_REFERENCE.findall(text))):
        try:
            _resolve_reference(ref)
        except (ImportError, AttributeError) as err:
            broken.append(f"{ref} ({err})")
    assert not broken, "docs/api.md names what does not exist:\n  " + "\n  ".join(broken)


def test_docs_api_signatures_match_the_code():
    """In each `## a.py / b.py` (or package `## a/`) section, every `name(args)` names a
    function, class or method of those modules, and every argument it shows is one the
    code takes."""
    import importlib

    text = API_DOC.read_text(encoding="utf-8")
    problems, checked = [], 0
    for heading, body in _sections(text):
        # A module (`nn/models.py`) or a package (`io/`, its `__init__` re-exporting the
        # names), separated by " / ".
        names = [
            part.strip().removesuffix(".py").rstrip("/").replace("/", ".")
            for part in heading.split(" / ")
            if re.fullmatch(r"[\w/]+(\.py|/)", part.strip())
        ]
        if not names:
            continue
        for name in names:
            assert f"{PACKAGE}.{name}" in MODULES, f"docs/api.md: no module {name} ({heading})"
        modules = [importlib.import_module(f"{PACKAGE}.{n}") for n in names]
        for span, dotted, args in _documented_calls(body):
            found = _candidates(dotted, modules)
            if not found:
                problems.append(f"## {heading}: `{span}`: {dotted} is not in {', '.join(names)}")
                continue
            checked += 1
            if args is not None and not any(_accepts(obj, args) for obj in found):
                problems.append(f"## {heading}: `{span}`: the code takes other arguments")
    assert not problems, "docs/api.md is out of date:\n  " + "\n  ".join(problems)
    assert checked >= 40, f"only {checked} signatures found in docs/api.md: is the parser broken?"


# --------------------------------------------------------------------------- docs/architecture.md

ARCHITECTURE_DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _module_map_names() -> list[str]:
    """The backticked names in the first column of the `## Module map` table."""
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    body = dict(_sections(text))["Module map"]
    rows = [line for line in body.splitlines() if line.startswith("|")][2:]  # header, rule
    assert rows, "docs/architecture.md: the module map has no rows"
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_the_module_map_names_every_module_and_only_modules():
    """docs/architecture.md's module map matches the package's files.

    The rule: each name in the map's first column is a path inside the package, either a
    module file (`io/mrc.py`, `__init__.py`) or a package folder (`io/`), which stands for
    that package's `__init__.py` only. Every `.py` file of the package must be named (a
    subpackage's `__init__.py` through its folder), and every name must exist.
    """
    names = _module_map_names()
    files = {path.relative_to(PACKAGE_DIR).as_posix() for path in MODULES.values()}
    covered, missing_in_code = set(), []
    for name in names:
        file = name + "__init__.py" if name.endswith("/") else name
        if not name.endswith(("/", ".py")):
            missing_in_code.append(f"{name} (neither a .py file nor a folder/)")
        elif file in files:
            covered.add(file)
        else:
            missing_in_code.append(name)
    unmapped = sorted(files - covered)
    assert not missing_in_code, (
        "docs/architecture.md's module map names what the package does not have: "
        + ", ".join(missing_in_code)
    )
    assert not unmapped, (
        "docs/architecture.md's module map leaves out these modules (add a row each): "
        + ", ".join(unmapped)
    )
    assert len(names) == len(set(names)), "a module is named twice in the module map"


def test_the_dock_sections_never_write_into_the_session():
    """The dock's parts own their state: sections and parts change the `Session` through
    its methods (``use_encoder``, ``use_classifier``, ``set_particle_diameter``...), never
    by assigning its attributes (`session.x = ...` / `self.session.x = ...`)."""
    offences = []
    for module, path in MODULES.items():
        if not module.startswith(f"{PACKAGE}._widgets") and module != f"{PACKAGE}.cli.demo":
            continue
        if module == f"{PACKAGE}._widgets._session":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            )
            for target in targets:
                if not isinstance(target, ast.Attribute):
                    continue
                owner = target.value
                if (isinstance(owner, ast.Name) and owner.id == "session") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "session"
                ):
                    offences.append(f"{module} line {node.lineno}: session.{target.attr} = ...")
    assert not offences, "\n".join(offences)
