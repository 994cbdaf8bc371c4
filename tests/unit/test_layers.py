"""How the modules of src/tunesmith depend on each other: one way, through public names, light at `--help`.

The import graph is read from the source (every `import` statement, function-local ones included; those under
`if TYPE_CHECKING:` are for type checkers only and left out), so a dependency hidden inside a function counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tunesmith

SRC = Path(tunesmith.__file__).parent
# What `tunesmith --help` must not import: each takes seconds (or pulls in torch).
HEAVY = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "lancedb",
    "sentence_transformers",
    "vllm",
)


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # file:line of the import statement

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported}  ({self.where})"


def module_names() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) of every import statement of one module, inside tunesmith.

    `from pkg import sub` depends on pkg (its __init__ runs first) and on the module pkg.sub when there is one.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if base in mods:  # the package or module named runs first, whatever is taken from it
                out.append((base, "", node.lineno))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in mods:
                    out.append((sub, "", node.lineno))
                elif base in mods:
                    out.append((base, alias.name, node.lineno))
    return out


def _packages(name: str) -> list[str]:
    """The packages whose __init__ runs before module `name` (a.b.c: a, a.b)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, dict[str, Edge]]:
    """Module -> the modules its import statements run: each target and, first, the __init__ of every package
    above it (except the importer's own packages, which are already running)."""
    mods = module_names()
    graph: dict[str, dict[str, Edge]] = {m: {} for m in mods}
    for name, path in mods.items():
        own = set(_packages(name))
        for target, _, line in imports(name, path, mods):
            for each in [*_packages(target), target]:
                if each in mods and each != name and each not in own and each not in graph[name]:
                    graph[name][each] = Edge(name, each, f"{path.relative_to(SRC.parent.parent)}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: dict[str, dict[str, Edge]], component: list[str]) -> str:
    members = set(component)
    edges = [str(e) for m in component for t, e in sorted(graph[m].items()) if t in members]
    return f"{len(component)} modules import each other:\n    " + "\n    ".join(edges)


def test_no_import_cycle() -> None:
    """No module imports, directly or through others, one that imports it back: the method registry
    (train/methods.py) is read by the command layer only, which hands the `Method` down to the code it calls."""
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles in src/tunesmith:\n" + "\n".join(describe(graph, c) for c in found)


def test_cycle_finder_reports_edges_with_their_lines() -> None:
    graph = {"a": {"b": Edge("a", "b", "a.py:3")}, "b": {"a": Edge("b", "a", "b.py:9")}, "c": {"a": Edge("c", "a", "c.py:1")}}
    assert cycles(graph) == [["a", "b"]]
    assert "a -> b  (a.py:3)" in describe(graph, ["a", "b"]) and "b -> a  (b.py:9)" in describe(graph, ["a", "b"])


def test_the_library_never_imports_the_command_line() -> None:
    """The CLI renders what the library returns; no module outside tunesmith/cli imports it (`python -m tunesmith`
    starts it)."""
    graph = import_graph()
    bad = [
        str(edge)
        for importer, edges in graph.items()
        if not importer.startswith("tunesmith.cli") and importer != "tunesmith.__main__"
        for target, edge in edges.items()
        if target == "tunesmith.cli" or target.startswith("tunesmith.cli.")
    ]
    assert not bad, "the library imports the command line:\n" + "\n".join(bad)


def private_imports() -> list[str]:
    """Imports of another module's `_name`: a private module outside its own package, or a private attribute."""
    mods = module_names()
    bad = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target, attr, line in imports(name, path, mods):
            where = f"{path.relative_to(SRC.parent.parent)}:{line}"
            if attr.startswith("_") and not attr.startswith("__") and target != name:
                bad.append(f"{where}: {name} imports {target}.{attr}")
            last = target.rpartition(".")[2]
            owner = target.rpartition(".")[0]
            if last.startswith("_") and not last.startswith("__") and not (package + ".").startswith(owner + "."):
                bad.append(f"{where}: {name} imports the private module {target}")
    return bad


def test_no_module_imports_another_modules_private_names() -> None:
    bad = private_imports()
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def test_help_imports_no_heavy_library() -> None:
    """`tunesmith --help` loads the command line only: no torch, transformers, TRL, datasets, LanceDB..."""
    code = f"import sys, tunesmith.cli\nprint(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "", f"`import tunesmith.cli` loaded {done.stdout.strip()}"


def test_reading_a_run_imports_no_training_code(tmp_path: Path) -> None:
    """A finished run's manifest (with its method's `details` record) is read without importing any train module:
    the records live in tunesmith.method_details."""
    from tunesmith.method_details import DPODetails
    from tunesmith.records import BaseModelRef, Manifest, write_manifest

    recipe = (Path(__file__).resolve().parents[2] / "configs" / "dpo.yaml").read_text(encoding="utf-8")
    (tmp_path / "run.yaml").write_text(recipe, encoding="utf-8")
    details = DPODetails(beta=0.1, loss_type="sigmoid", reference="the base under the adapter")
    ref = BaseModelRef(spec="smollm2-135m-instruct", path="smollm2-135m-instruct")
    manifest = Manifest(run="dpo", method="dpo", adapter="lora", base_model=ref, chat_template_sha256="", details=details)
    write_manifest(tmp_path / "manifest.json", manifest)
    code = (
        "import sys\nfrom tunesmith.run import load_run\n"
        f"run = load_run({str(tmp_path)!r})\n"
        "print(type(run.manifest.details).__name__, sorted(m for m in sys.modules if m.startswith('tunesmith.train')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["DPODetails", "[]"], done.stdout + done.stderr


def _statements(path: Path) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of a module outside `if TYPE_CHECKING:`, and whether it sits inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    local = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f) if n is not f
    }
    return [(n, id(n) in local) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(tunesmith modules, other top-level packages) that one import statement loads."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        names = [base, *(f"{base}.{a.name}" for a in node.names)]
    ours = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)} & set(mods)
    return ours, {n.split(".")[0] for n in names if n.split(".")[0] != "tunesmith"}


# What an import inside a function may keep out of `tunesmith --help`: HEAVY, and the libraries that take tens of
# milliseconds each (a web framework, numpy, templates, plotting, clients, databases).
SLOW = (
    *HEAVY,
    *("fastapi", "starlette", "uvicorn", "numpy", "jinja2", "matplotlib", "openai", "httpx", "prometheus_client"),
    *("optuna", "mlflow", "sqlalchemy", "psycopg", "psycopg2", "pyarrow", "pandas", "gguf", "PIL", "scipy"),
    *("jsonschema", "llama_cpp", "playwright", "tensorboard", "sklearn"),
)


def heavy_at_import() -> set[str]:
    """The tunesmith modules whose import (module-level statements, followed through tunesmith) loads a SLOW one."""
    mods = module_names()
    top: dict[str, tuple[set[str], set[str]]] = {}
    for name, path in mods.items():
        ours: set[str] = set()
        other: set[str] = set()
        for node, local in _statements(path):
            if not local:
                o, e = _targets(node, name, path, mods)
                ours |= o - {name}
                other |= e
        top[name] = (ours, other)
    heavy = {m for m, (_, other) in top.items() if other & set(SLOW)}
    while grown := {m for m, (ours, _) in top.items() if m not in heavy and ours & heavy}:
        heavy |= grown
    return heavy


def test_function_local_imports_only_keep_heavy_libraries_out_of_help() -> None:
    """An import inside a function hides a dependency from the reader: outside the command layer it is there only
    when the module it loads pulls in torch, transformers, a web framework & co. at import; a light one goes at the
    top. The command layer (cli/) imports the library inside each command, so `--help` loads the command line only."""
    mods, heavy = module_names(), heavy_at_import()
    bad = [
        f"{path.relative_to(SRC.parent.parent)}:{node.lineno}: {ast.unparse(node)}"
        for name, path in mods.items()
        if not name.startswith(("tunesmith.cli", "tunesmith.__main__"))
        for node, local in _statements(path)
        if local and (ours := _targets(node, name, path, mods)[0]) and not ours & heavy
    ]
    assert not bad, "function-local imports of light tunesmith modules (move them to the top):\n" + "\n".join(bad)
