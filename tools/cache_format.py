"""Record which code the cached toy-world entries were keyed with: `python tools/cache_format.py` writes
tests/cache_format.json, the digest of every module's code (comments and formatting left out) beside
`toyworld.CACHE_FORMAT`. tests/test_cache_format.py fails when the code changed but the record did not, so nobody
changes what an entry would hold without deciding whether `CACHE_FORMAT` must be raised (which rebuilds every entry)."""
import ast, hashlib, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "cache_format.json"


def code_digest(path: Path) -> str:
    "SHA-256 of a module's syntax tree without docstrings: edits to comments, docstrings or layout leave it unchanged."
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def current() -> dict:
    sys.path.insert(0, str(ROOT))
    from longalign.toyworld import CACHE_FORMAT
    mods = sorted(p for p in (ROOT / "longalign").glob("*.py") if p.name not in ("__init__.py", "_modidx.py"))
    return {"cache_format": CACHE_FORMAT, "modules": {p.name: code_digest(p) for p in mods}}


if __name__ == "__main__":
    RECORD.write_text(json.dumps(current(), indent=1) + "\n")
    print(f"recorded {RECORD.relative_to(ROOT)}")
