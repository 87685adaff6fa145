"""The shape of the package, checked on its source with ``ast``: no import cycle (imports inside functions count
too), no module over 400 lines, no function over 60, no module importing another's private names; and the README
a user reads first."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "audioclf"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> list[tuple[str, list[str]]]:
    """``(module imported, names taken from it)`` for every import statement of a module, wherever it is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub, []) if sub in known else (base, [a.name]))
    return [(m, names) for m, names in found if m in known]


def test_the_import_graph_has_no_cycle():
    known = modules()
    graph = {m: {dep for dep, _ in imports(m, p, known) if dep != m} for m, p in known.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for dep in sorted(graph[m]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path + [m, dep])
            if dep not in state:
                visit(dep, path + [m])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_module_imports_another_modules_private_names():
    known = modules()
    private = [(m, dep, n) for m, p in known.items() for dep, names in imports(m, p, known) for n in names
               if n.startswith("_") and not n.startswith("__") and dep != m]
    assert not private, private


def test_modules_and_functions_stay_short():
    long_modules = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
                    if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long_modules, long_modules
    long_functions = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                      for p in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > 60]
    assert not long_functions, long_functions


def test_the_readme_is_a_users_document():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 12 * 1024
    assert text.startswith("# audioclf") and "make demo" in text.split("##")[0] and "make test" in text.split("##")[0]
    assert "pip install" in text and all(extra in text for extra in ("serve", "export", "formats"))
    for link in [part.split(")")[0] for part in text.split("](")[1:]]:
        if not link.startswith(("http", "#")):
            assert (ROOT / link.split("#")[0]).exists(), link


def test_code_points_to_no_lab_notes():
    pointers = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                if "experiments.md" in p.read_text(encoding="utf-8")]
    assert not pointers and not (ROOT / "docs" / "experiments.md").exists(), pointers
