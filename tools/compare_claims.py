"""Compare two claims tables (`nbs/toy_claims.json`, written by 07 at its default run): does a rebuild reproduce the claims?

    python tools/compare_claims.py <committed.json> <rebuilt.json>     # e.g. after tools/rebuild_shipped.sh:
    python tools/compare_claims.py <(git show HEAD:nbs/toy_claims.json) nbs/toy_claims.json

One row per measure (matched by claim, measure and model): both values, the difference, and whether the rebuilt value lies
inside the committed 95 % interval (where the measure has one) and on the same side of zero (where the interval of the
committed value excludes zero: the claim's direction). Prints the table and a summary; exits 1 when a direction flips, 2
when a file is unreadable or the two tables do not hold the same measures, 0 otherwise (a value outside the other's
interval alone is reported, not an error: two estimates of one quantity fall outside each other's interval now and then)."""
import argparse, json, sys


def _key(r: dict) -> tuple: return (r["claim"], r["measure"], r["model"])


def compare(committed: list, rebuilt: list) -> list:
    "One dict per measure of `committed`: key, both values, `inside` (None without an interval) and `flipped`."
    a, b = {_key(r): r for r in committed}, {_key(r): r for r in rebuilt}
    if set(a) != set(b):
        raise ValueError(f"the two tables hold different measures: only in the first {sorted(set(a) - set(b))}, "
                         f"only in the second {sorted(set(b) - set(a))}")
    rows = []
    for k, r in a.items():
        v, lo, hi, w = r["value"], r.get("ci_low"), r.get("ci_high"), b[k]["value"]
        has_ci = lo is not None and hi is not None and v is not None and w is not None
        sign = (1 if lo > 0 else -1 if hi < 0 else 0) if has_ci else 0      # the committed interval's side of zero
        rows.append(dict(claim=k[0], measure=k[1], model=k[2], committed=v, rebuilt=w,
                         diff=None if v is None or w is None else w - v,
                         inside=(lo <= w <= hi) if has_ci else None,
                         flipped=bool(sign) and (w > 0) != (sign > 0)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("committed"); ap.add_argument("rebuilt")
    a = ap.parse_args(argv)
    tables = []
    for f in (a.committed, a.rebuilt):
        try: tables.append(json.loads(open(f).read()))
        except (OSError, ValueError) as e:
            print(f"{f}: not a readable claims table ({e}); give two toy_claims.json files", file=sys.stderr); return 2
    try: rows = compare(*tables)
    except (ValueError, KeyError, TypeError) as e:
        print(f"the claims tables cannot be compared: {e}", file=sys.stderr); return 2
    fmt = lambda x: "" if x is None else f"{x:.2f}"
    print("| claim | measure | model | committed | rebuilt | difference | inside the committed interval |\n|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "" if r["inside"] is None else "yes" if r["inside"] else "no"
        if r["flipped"]: mark += ", the direction flips"
        print(f"| {r['claim']} | {r['measure']} | {r['model']} | {fmt(r['committed'])} | {fmt(r['rebuilt'])} | {fmt(r['diff'])} | {mark} |")
    with_ci = [r for r in rows if r["inside"] is not None]
    flipped = [r for r in rows if r["flipped"]]
    print(f"\n{len(rows)} measures; of the {len(with_ci)} with an interval, {sum(r['inside'] for r in with_ci)} rebuilt values lie "
          f"inside the committed interval; {len(flipped)} of the directions the committed intervals show flip.")
    return 1 if flipped else 0


if __name__ == "__main__":
    sys.exit(main())
