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
                if child.module in (None, "longalign"):      # from . import x / from longalign import x
                    if child.level or child.module: out.extend((a.name, child.lineno, in_fn) for a in child.names)
                    continue
                name = ("longalign." if child.level else "") + child.module
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
        text = (PKG / f"{m}.py").read_text()
        assert "toyworld" not in text and "import experiments" not in text and "longalign.experiments" not in text, m


def test_the_check_sees_every_import_form(tmp_path, monkeypatch):
    "The layering check cannot pass by missing an import written another way."
    src = "from longalign import experiments\nfrom . import toyworld\ndef f():\n    from .rft import x\n    import longalign.sft\n"
    (tmp_path / "probe.py").write_text(src)
    monkeypatch.setattr(__import__(__name__), "PKG", tmp_path)
    assert sorted(imports("probe")) == [("experiments", 1, False), ("rft", 4, True), ("sft", 5, True), ("toyworld", 2, False)]
