"""Ship the toy models with the package (maintainers; never run by CI).

The models a default run of the notebooks trains are copied from a toy-world cache into `longalign/shipped/`, one folder per
entry, weights gzip-compressed, each with the manifest (config, SHA-256 of every file, metrics) it was built with. A
newcomer's first run then loads them (`toyworld.cached_build` verifies every hash first) instead of training them.

    bash tools/rebuild_shipped.sh /tmp/fresh-cache          # every shipped model from scratch, then the notebooks on them
    python tools/ship_models.py /tmp/fresh-cache --skip eval_ --clean   # ship what that default run built
    longalign-zoo --verify                                  # check the shipped copies

Run the notebooks into a fresh cache (as above) so that only what the defaults use is shipped: every entry of the cache
folder given is shipped, except the names given with `--skip`.
"""
import argparse, shutil, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from longalign.toyworld import cache_root, ship_entry, shipped_root, verify_entry, verify_shipped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", nargs="?", help="the cache folder a default run built (default: $LONGALIGN_CACHE or ~/.cache/longalign)")
    ap.add_argument("--skip", nargs="*", default=[], help="entry-name prefixes not to ship (e.g. eval_)")
    ap.add_argument("--clean", action="store_true", help="remove previously shipped entries first")
    a = ap.parse_args(argv)
    root, dest = cache_root(a.cache), shipped_root()
    if a.clean and dest.exists(): shutil.rmtree(dest)
    shipped = []
    for entry in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()):
        if any(entry.name.startswith(s) for s in a.skip): continue
        problems = verify_entry(entry)
        if problems: print(f"skipped {entry.name}: {'; '.join(problems)}"); continue
        out = ship_entry(entry, dest)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        shipped.append((entry.name, size)); print(f"shipped {entry.name:45s} {size / 2**20:6.2f} MiB")
    bad = {k: v for k, v in verify_shipped(dest).items() if v}
    print(f"{len(shipped)} entries, {sum(s for _, s in shipped) / 2**20:.1f} MiB in {dest}; damaged after shipping: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
