"""The package's layout (docs/architecture.md): which module may import which, no circles,
small modules, and the old flat names failing with a line that says where their code went."""
import ast
import importlib
from pathlib import Path

import pytest

import competition

PACKAGE = Path(competition.__file__).parent
# lowest first; a module may import its own layer and those below, never one above
LAYERS = [("base", ("errors.py", "files.py", "progress.py", "__init__.py")), ("data", ("data/",)),
          ("model", ("model/",)), ("stages", ("train/", "infer/")),
          ("outer", ("kaggle/", "bench/")), ("front", ("cli/", "__main__.py"))]
APART = ("train/", "infer/")  # one layer, side by side: neither imports the other
LONGEST = 450  # lines; rle.py is one numba algorithm (encode/decode kernels), kept whole
WHOLE = {"data/rle.py"}


def modules() -> dict[str, Path]:
    """'competition.data.rle' -> its file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(path: Path, name: str, known: set) -> set:
    """The package's modules that `path` imports anywhere (also inside functions): each
    name resolved to the longest known module it starts with."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n not in (name, "competition"):
                found.add(n)
    return found


def layer(path: Path) -> int:
    rel = path.relative_to(PACKAGE).as_posix()
    return next(i for i, (_, prefixes) in enumerate(LAYERS) if rel.startswith(prefixes))


def graph() -> tuple[dict, dict]:
    mods = modules()
    return mods, {m: imported(p, m, set(mods)) for m, p in mods.items()}


def wrong_imports(mods: dict, edges: dict) -> list[str]:
    """Each import of a layer above, and each import between train/ and infer/."""
    wrong = []
    for m, deps in sorted(edges.items()):
        rel = mods[m].relative_to(PACKAGE).as_posix()
        for d in sorted(deps):
            other = mods[d].relative_to(PACKAGE).as_posix()
            if layer(mods[d]) > layer(mods[m]):
                wrong.append(f"{rel} imports {other} (a layer above)")
            if {rel.split("/")[0] + "/", other.split("/")[0] + "/"} == set(APART):
                wrong.append(f"{rel} imports {other} (train/ and infer/ stand apart)")
    return wrong


def circles(edges: dict) -> list[str]:
    """Every back edge of a depth-first search, as the circle it closes: none means the
    imports form no cycle at any depth."""
    state, found = {}, []

    def visit(m, trail):
        state[m] = "open"
        for d in sorted(edges[m]):
            if state.get(d) == "open":
                found.append(" -> ".join(trail[trail.index(d):] + [d]))
            elif d not in state:
                visit(d, trail + [d])
        state[m] = "done"
    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found


def test_every_module_imports_only_its_layer_and_those_below():
    assert wrong_imports(*graph()) == []


def test_no_import_circles():
    assert circles(graph()[1]) == []


def test_the_checks_see_an_upward_import_a_crossing_and_a_circle(tmp_path):
    """The checks above on planted examples: data importing model inside a function, infer
    importing train, and a circle of three."""
    (tmp_path / "data").mkdir()
    source = tmp_path / "data" / "a.py"
    source.write_text("def f():\n    from competition.model import b\n")
    known = {"competition.data.a", "competition.model.b", "competition.model"}
    assert imported(source, "competition.data.a", known) == {"competition.model",
                                                             "competition.model.b"}
    mods = {"d": PACKAGE / "data" / "rle.py", "m": PACKAGE / "model" / "config.py",
            "t": PACKAGE / "train" / "fit.py", "i": PACKAGE / "infer" / "oof.py"}
    assert wrong_imports(mods, {"d": {"m"}, "m": {"d"}, "t": set(), "i": {"t"}}) == [
        "data/rle.py imports model/config.py (a layer above)",
        "infer/oof.py imports train/fit.py (train/ and infer/ stand apart)"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > LONGEST}
    assert set(long) <= WHOLE, long


def test_the_subpackages_init_files_import_nothing_of_the_package():
    """A submodule's import runs its package's __init__ first: an __init__ that imported
    its submodules would load them all, and an import of the package from one of them would
    be a circle."""
    mods, edges = graph()
    for m, path in mods.items():
        if path.name == "__init__.py" and path.parent != PACKAGE and path.parent.name != "cli":
            assert edges[m] == set(), m


@pytest.mark.parametrize("old", sorted(competition.MOVED))
def test_an_old_flat_module_name_says_where_its_code_went(old):
    new = competition.MOVED[old].split(" ")[0]
    importlib.import_module(f"competition.{new}")  # the new place exists
    with pytest.raises(ModuleNotFoundError, match=rf"^competition\.{old} moved to "
                                                  rf"competition\.{new}\b"):
        importlib.import_module(f"competition.{old}")
