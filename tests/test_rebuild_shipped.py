"""tools/rebuild_shipped.py's scheduler: every build in a process of its own, each once the builds it needs are done, at
most `workers` at a time; a failed build stops the others, names its log and exits non-zero."""
import json, os, sys, time
from functools import partial
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import rebuild_shipped as rs


def _record(cache, name, seconds, fail=False):
    t0 = time.time(); time.sleep(seconds)
    print(f"{name} ran")                     # to its log
    if fail: raise RuntimeError(f"{name} broke")
    (Path(cache) / f"{name}.json").write_text(json.dumps({"start": t0, "end": time.time(), "pid": os.getpid()}))


def diamond(cache):   # a is slow; c needs a; d needs b and c
    return {"a": ((), partial(_record, cache, "a", 1.5)), "b": ((), partial(_record, cache, "b", 0.1)),
            "c": (("a",), partial(_record, cache, "c", 0.1)), "d": (("b", "c"), partial(_record, cache, "d", 0.1))}


def broken(cache):    # bad fails while slow runs; after needs bad
    return {"slow": ((), partial(_record, cache, "slow", 60)), "bad": ((), partial(_record, cache, "bad", 1.0, fail=True)),
            "after": (("bad",), partial(_record, cache, "after", 0.1))}


def cycle(cache): return {"x": (("y",), print), "y": (("x",), print)}
def unknown_need(cache): return {"x": (("nowhere",), print)}


def test_builds_run_once_their_needs_are_done_in_processes_of_their_own(tmp_path):
    took = rs.run_builds("test_rebuild_shipped:diamond", tmp_path, workers=2, logs=tmp_path / "logs", say=lambda *_: None)
    assert set(took) == {"a", "b", "c", "d"}
    r = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in "abcd"}
    assert r["c"]["start"] >= r["a"]["end"] and r["d"]["start"] >= max(r["b"]["end"], r["c"]["end"])
    assert r["b"]["start"] < r["a"]["end"]                      # two at a time: b ran beside a
    assert len({x["pid"] for x in r.values()}) == 4 and os.getpid() not in {x["pid"] for x in r.values()}
    assert all((tmp_path / "logs" / f"{n}.log").read_text().startswith(f"{n} ran") for n in "abcd")


def test_one_worker_runs_the_builds_one_after_another(tmp_path):
    rs.run_builds("test_rebuild_shipped:diamond", tmp_path, workers=1, logs=tmp_path / "logs", say=lambda *_: None)
    r = sorted((json.loads((tmp_path / f"{n}.json").read_text()) for n in "abcd"), key=lambda x: x["start"])
    assert all(later["start"] >= earlier["end"] for earlier, later in zip(r, r[1:]))


def test_a_failed_build_stops_the_others_and_names_its_log(tmp_path):
    t0 = time.time()
    with pytest.raises(RuntimeError, match=r"build 'bad' failed .*bad\.log"):
        rs.run_builds("test_rebuild_shipped:broken", tmp_path, workers=2, logs=tmp_path / "logs", say=lambda *_: None)
    assert time.time() - t0 < 55                                  # slow (60 s) was stopped, not waited for
    assert not any(tmp_path.glob("*.json"))                      # neither slow nor after finished
    assert "RuntimeError: bad broke" in (tmp_path / "logs" / "bad.log").read_text()


def test_needs_outside_the_list_or_in_a_cycle_are_refused(tmp_path):
    with pytest.raises(ValueError, match="a cycle"):
        rs.run_builds("test_rebuild_shipped:cycle", tmp_path, workers=2, logs=tmp_path, say=lambda *_: None)
    with pytest.raises(ValueError, match=r"needs \['nowhere'\] are not builds of the list"):
        rs.run_builds("test_rebuild_shipped:unknown_need", tmp_path, workers=2, logs=tmp_path, say=lambda *_: None)


import compare_claims as cc


def _claim(measure, value, lo=None, hi=None):
    return {"claim": "T4", "measure": measure, "model": "m", "value": value, "ci_low": lo, "ci_high": hi, "n": 10}


def test_compare_claims_reports_intervals_and_flipped_directions(tmp_path, capsys):
    committed = [_claim("gain", 2.0, 0.5, 3.5), _claim("loss", -4.0, -6.0, -2.0), _claim("fid", 2.3), _claim("flat", 0.2, -1.0, 1.4)]
    same_way = [_claim("gain", 3.0), _claim("loss", -7.0), _claim("fid", 2.9), _claim("flat", -0.8)]
    rows = {r["measure"]: r for r in cc.compare(committed, same_way)}
    assert [rows[m]["inside"] for m in ("gain", "loss", "fid", "flat")] == [True, False, None, True]
    assert not any(r["flipped"] for r in rows.values())              # -0.8 for 'flat': its interval holds 0, no direction
    assert abs(rows["fid"]["diff"] - 0.6) < 1e-9
    flipped = [_claim("gain", -0.1), _claim("loss", -3.0), _claim("fid", 2.3), _claim("flat", 0.2)]
    assert [r["measure"] for r in cc.compare(committed, flipped) if r["flipped"]] == ["gain"]
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(committed)); b.write_text(json.dumps(same_way)); c.write_text(json.dumps(flipped))
    assert cc.main([str(a), str(b)]) == 0 and "of the 3 with an interval, 2 rebuilt values lie inside" in capsys.readouterr().out
    assert cc.main([str(a), str(c)]) == 1 and "| T4 | gain | m | 2.00 | -0.10 | -2.10 | no, the direction flips |" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"only in the first \[\('T4', 'fid', 'm'\)\]"):
        cc.compare(committed, same_way[:2] + same_way[3:])
    c.write_text(json.dumps(same_way[:2]))
    assert cc.main([str(a), str(c)]) == 2 and "cannot be compared: the two tables hold different measures" in capsys.readouterr().err
    assert cc.main([str(a), str(tmp_path / "missing.json")]) == 2 and "not a readable claims table" in capsys.readouterr().err
