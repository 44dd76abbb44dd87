"""The package's layering: each module imports only modules below it (at module level or inside a function), and the
method modules know nothing of the toy world — it reaches them only as a preset (`core.MODEL_SOURCES`)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "longalign"
#: bottom to top; a module may import only modules to its left
LAYERS = ["core", "toyworld", "encoding", "decomposition", "preference", "longsd", "sft", "rft", "evaluation", "experiments"]
METHOD = ["encoding", "decomposition", "preference", "longsd", "sft", "rft"]


def imports(module: str) -> list:
    "(imported longalign module, line, inside a function?) for every import statement of `module`."
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out = []
    def visit(node, in_fn):
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                name = ("longalign." if child.level else "") + (child.module or "")
                if name.startswith("longalign."): out.append((name.split(".")[1], child.lineno, in_fn))
            elif isinstance(child, ast.Import):
                out.extend((a.name.split(".")[1], child.lineno, in_fn) for a in child.names if a.name.startswith("longalign."))
            visit(child, fn)
    visit(tree, False)
    return out


def test_every_module_is_in_the_layering():
    assert sorted(LAYERS) == sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "_modidx"))


def test_modules_import_only_modules_below_them():
    for m in LAYERS:
        for dep, line, in_fn in imports(m):
            assert LAYERS.index(dep) < LAYERS.index(m), f"longalign/{m}.py:{line} imports {dep}{' inside a function' if in_fn else ''}, which is not below it"


def test_method_modules_never_import_the_toy_world():
    for m in METHOD:
        assert not [d for d, _, _ in imports(m) if d in ("toyworld", "experiments")], m
        assert "toyworld" not in (PKG / f"{m}.py").read_text(), f"{m}.py mentions toyworld"
