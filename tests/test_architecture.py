"""The package's shape: layers that import only the layers below them, no import cycle at any level, small files,
every module importable on its own in a fresh process. The layers are the ones docs/ARCHITECTURE.md draws."""

import ast
import os
import sys
from pathlib import Path

import pytest

import llmsparse

PACKAGE = Path(llmsparse.__file__).parent

#: The layers, lowest first: a module may import its own layer's package and the layers below (the root's
#: ground-floor modules may import errors only). Side by side in one layer: packages that must not import each other.
LAYERS = [
    {"errors"},
    {"registry", "settings", "version"},
    {"core"},
    {"gpu"},
    {"data"},
    {"methods", "formats"},
    {"runtime"},
    {"pruning", "activation", "structured"},
    {"recovery"},
    {"checkpoint"},
    {"evaluation"},
    {"cli"},
    {"__init__"},
]


def _imports(path: Path, module: str, root: str) -> set[str]:
    """Modules under ``root`` that ``module`` imports anywhere in its file (function-level and TYPE_CHECKING imports included)."""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module or ""
            found.update(f"{source}.{a.name}" for a in node.names)
            found.add(source)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.split(".")[0] == root}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules importing it runs, package ``__init__``s included.

    Importing ``a.b.c`` first runs ``a/__init__`` and ``a/b/__init__``: those are edges too (unless the
    importer sits inside that package, which is initialised before it). That is how an ``__init__`` that
    imports all its submodules closes a cycle no module-to-module edge shows.
    """
    root = package.name
    modules = {}
    for path in package.rglob("*.py"):
        parts = [root, *path.relative_to(package).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path, module, root):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            parts = name.split(".")
            for depth in range(2, len(parts) + 1):  # the target and every package above it, the root excepted
                target = ".".join(parts[:depth])
                if target != module and not module.startswith(target + "."):
                    targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle a depth-first walk meets, as ``a -> b -> a``."""
    state, found = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def layer_of(module: str) -> tuple[int, str]:
    """``(layer index, top-level name)`` of a module of the package (the front ``__init__`` is the top)."""
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names), top


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, or of a sibling package of the same layer."""
    found = []
    for module, targets in graph.items():
        level, top = layer_of(module)
        for target in targets:
            t_level, t_top = layer_of(target)
            if t_level > level or (t_level == level and t_top != top):
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_no_import_cycle_at_any_level_package_inits_and_lazy_imports_included():
    assert not cycles(import_graph(PACKAGE))


def test_each_layer_imports_only_the_layers_below_it():
    graph = import_graph(PACKAGE)
    assert all(layer_of(m) for m in graph)  # every top-level module and package belongs to a layer
    assert not upward(graph)
    assert graph["llmsparse.errors"] == set()
    for ground in ("llmsparse.registry", "llmsparse.settings", "llmsparse.version"):
        assert graph[ground] <= {"llmsparse.errors"}, ground


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "llmsparse"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_checks_find_a_planted_package_init_cycle_and_an_upward_import(tmp_path):
    """The cycle the flat layout hid: methods/__init__ imports every method, alps imports reconstruct, reconstruct imports methods.base."""
    package = _plant(
        tmp_path,
        {
            "__init__.py": "from . import methods\n",
            "errors.py": "",
            "methods/__init__.py": "from .base import Method\nfrom . import alps\n",
            "methods/base.py": "class Method: ...\n",
            "methods/alps.py": "def solve():\n    from ..pruning.reconstruct import pcg  # a lazy import\n",
            "pruning/__init__.py": "",
            "pruning/reconstruct.py": "from ..methods.base import Method\n",
            "core/__init__.py": "",
            "core/masks.py": "from ..pruning import reconstruct\n",
        },
    )
    graph = import_graph(package)
    assert "llmsparse.methods" in graph["llmsparse.pruning.reconstruct"]  # importing methods.base runs methods/__init__
    assert cycles(graph) == ["llmsparse.methods -> llmsparse.methods.alps -> llmsparse.pruning.reconstruct -> llmsparse.methods"]
    assert "llmsparse.core.masks -> llmsparse.pruning.reconstruct" in upward(graph)
    assert "llmsparse.methods.alps -> llmsparse.pruning.reconstruct" in upward(graph)


def test_no_file_in_the_package_over_350_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_module_imports_on_its_own_in_a_fresh_process():
    """Each module imported first, in a child forked before anything of llmsparse was imported: no order dependence, no warning.

    The parent imports the third-party libraries once (only llmsparse's own import order is under test), so
    each child costs llmsparse's import alone."""
    names = sorted(import_graph(PACKAGE))
    script = (
        "import os, sys, importlib, warnings, logging\n"
        "import torch, transformers, transformers.modeling_utils, accelerate, safetensors, tqdm, yaml  # shared by the children\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.dup2(w, 2)\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except BaseException as err:\n"
        "            print(repr(err), file=sys.stderr)\n"
        "            os._exit(1)\n"
        "        sys.stderr.flush()\n"
        "        os._exit(0)\n"
        "    os.close(w)\n"
        "    err = os.read(r, 1 << 16).decode()\n"
        "    os.close(r)\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    if status or 'llmsparse' in err:\n"
        "        failed.append(f'{name}: {err.strip()[-300:]}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
