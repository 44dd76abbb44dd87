"""Cached toy-world entries are keyed by their config and `toyworld.CACHE_FORMAT`: a code change that alters what an
entry would hold must raise CACHE_FORMAT, or entries trained by the old code are reused silently. This test fails when
the code of a module changed (comments, docstrings and layout do not count) but tests/cache_format.json was not
re-recorded, and says what to decide."""
import importlib.util, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cache_format", ROOT / "tools" / "cache_format.py")
cache_format = importlib.util.module_from_spec(spec); spec.loader.exec_module(cache_format)


def test_digest_ignores_comments_and_docstrings_but_not_code(tmp_path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('def f(x):\n    "Doc."\n    return x + 1\n')
    b.write_text('def f(x):   # a comment\n    "Other doc."\n\n    return x + 1\n')
    c.write_text('def f(x):\n    "Doc."\n    return x + 2\n')
    assert cache_format.code_digest(a) == cache_format.code_digest(b) != cache_format.code_digest(c)


def test_cache_format_record_matches_the_code():
    recorded = json.loads(cache_format.RECORD.read_text())
    now = cache_format.current()
    changed = sorted(m for m in set(now["modules"]) | set(recorded["modules"]) if now["modules"].get(m) != recorded["modules"].get(m))
    assert not changed and now["cache_format"] == recorded["cache_format"], (
        f"the code of {', '.join(changed) or 'no module'} changed since tests/cache_format.json was recorded "
        f"(CACHE_FORMAT {recorded['cache_format']} -> {now['cache_format']}). If the change alters what a cached toy-world "
        f"entry would hold (training, data, model code), raise toyworld.CACHE_FORMAT in nbs/00a_toyworld.ipynb so every "
        f"entry is rebuilt; either way, run `python tools/cache_format.py` and commit the record.")
