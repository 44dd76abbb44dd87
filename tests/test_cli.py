"Process-level test of the console scripts the README gives: longalign-sample, then longalign-eval, at smoke sizes."
import json, os, random, subprocess, sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest

BIN = Path(sys.executable).parent


def _run(*args, check=True, env=None, timeout=900):
    r = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=timeout, env=env)
    if check: assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_sample_then_eval(tmp_path):
    from longalign.toyworld import long_caption, scenes
    caps = [long_caption(s, random.Random(i)).text for i, s in enumerate(scenes(3, seed=7))]
    (tmp_path / "p.txt").write_text("\n".join(caps) + "\n")
    out = tmp_path / "imgs"
    _run("longalign-sample", tmp_path / "p.txt", out, "--encoders", "base", "--steps", "2", "--batch-size", "2", "--zoo", "smoke",
         "--device", "cpu")
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png", "2.png"]
    assert [json.loads(l)["caption"] for l in (out / "prompts.jsonl").read_text().splitlines()] == caps
    (out / "1.png").write_bytes(b"\x89PNG broken")
    _run("longalign-eval", out, "--zoo", "smoke", "--metrics", "denscore,vqa", "--method", "toy-base", "--device", "cpu")
    s = pd.read_csv(out / "eval" / "summary.csv").set_index("metric")
    assert s.loc["skipped:corrupt_image", "n"] == 1 and s.loc["denscore", "n"] == 2 and s.loc["vqa", "n"] == 2
    assert (s.method == "toy-base").all() and json.loads(s.loc["vqa", "versions"])["preset"] == "toy"
    rows = [json.loads(l) for l in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "2"] and all(0 <= r["vqa"] <= 100 for r in rows)
    # bad input: a clear message and a non-zero exit, before any work
    r = _run("longalign-eval", out, "--zoo", "smoke", "--metrics", "fid", check=False)
    assert r.returncode == 2 and "reference" in r.stderr
    r = _run("longalign-sample", tmp_path / "missing.txt", out, "--zoo", "smoke", check=False)
    assert r.returncode == 2 and "not found" in r.stderr
    r = _run("longalign-eval", out, "--zoo", "smoke", "--device", "gpu", check=False)
    assert r.returncode == 2 and "error: device='gpu' (--device) is not a torch device" in r.stderr
    r = _run("longalign-eval", out, "--zoo", "smoke", "--metrics", "fid", "--reference", tmp_path / "refrence", check=False)
    assert r.returncode == 2 and "reference folder" in r.stderr and "not found" in r.stderr
    assert [json.loads(l)["id"] for l in (out / "eval" / "samples.jsonl").read_text().splitlines()] == ["0", "2"]   # untouched


def test_a_bug_inside_a_run_is_not_turned_into_a_usage_error(tmp_path):
    "Only bad input is a usage error: an exception from inside sampling or scoring propagates, with its traceback."
    from longalign import evaluation
    (tmp_path / "p.txt").write_text("A red circle in the top left.\n")
    with mock.patch.object(evaluation, "sample_folder", side_effect=KeyError("text_embeds")):
        with pytest.raises(KeyError, match="text_embeds"):
            evaluation.sample_cli([str(tmp_path / "p.txt"), str(tmp_path / "out"), "--encoders", "base", "--zoo", "smoke"])
    (tmp_path / "imgs").mkdir(); (tmp_path / "imgs" / "0.png").write_bytes(b"not read")
    (tmp_path / "imgs" / "prompts.jsonl").write_text('{"id": "0", "caption": "A red circle in the top left."}\n')
    with mock.patch.object(evaluation, "evaluate_folder", side_effect=KeyError("pixel_values")):
        with pytest.raises(KeyError, match="pixel_values"):
            evaluation.eval_cli([str(tmp_path / "imgs"), "--zoo", "smoke"])


def test_eval_cli_names_a_missing_prompt_file_or_denscore_folder_before_any_model_loads(tmp_path, capsys):
    from longalign import evaluation
    (tmp_path / "imgs").mkdir(); (tmp_path / "imgs" / "0.png").write_bytes(b"not read")
    with mock.patch.object(evaluation, "evaluate_folder", side_effect=AssertionError("must not run")):
        with pytest.raises(SystemExit) as e: evaluation.eval_cli([str(tmp_path / "imgs"), "--zoo", "smoke"])
        assert e.value.code == 2 and "prompts.jsonl not found" in capsys.readouterr().err
        (tmp_path / "imgs" / "prompts.jsonl").write_text('{"id": "0", "caption": "A red circle."}\n')
        with pytest.raises(SystemExit) as e:
            evaluation.eval_cli([str(tmp_path / "imgs"), "--zoo", "smoke", "--denscore", str(tmp_path / "nowhere")])
        assert e.value.code == 2 and "--denscore folder" in capsys.readouterr().err


def test_zoo_defaults_to_smoke_under_in_test(tmp_path):
    """CI runs the README's commands verbatim with IN_TEST=1: without --zoo both scripts then use the smoke toy world
    (the sample folder's manifest and the summary's versions name the zoo), and a rerun with other settings is refused."""
    from longalign.evaluation import _zoo_id
    from longalign.experiments import toy_world
    from longalign.toyworld import long_caption, scenes
    caps = [long_caption(s, random.Random(i)).text for i, s in enumerate(scenes(2, seed=3))]
    (tmp_path / "p.txt").write_text("\n".join(caps) + "\n")
    # Both runs on one thread: IN_TEST alone would give run a one thread and run b torch's default, and sums over a
    # different number of threads round differently, so the images would not be equal to the byte.
    one_thread = {k: v for k, v in os.environ.items() if k != "IN_TEST"} | {"OMP_NUM_THREADS": "1"}
    env = {**one_thread, "IN_TEST": "1"}
    _run("longalign-sample", tmp_path / "p.txt", tmp_path / "a", "--encoders", "base", "--steps", "2", env=env, timeout=300)
    _run("longalign-sample", tmp_path / "p.txt", tmp_path / "b", "--encoders", "base", "--steps", "2", "--zoo", "smoke", env=one_thread)
    smoke = toy_world("smoke")
    zoo_of = lambda d: json.loads((tmp_path / d / "manifest.json").read_text())["zoo"]
    assert zoo_of("a") == zoo_of("b") == {k: v.name for k, v in sorted(smoke.entries.items())}
    assert (tmp_path / "a" / "0.png").read_bytes() == (tmp_path / "b" / "0.png").read_bytes()
    _run("longalign-eval", tmp_path / "a", "--metrics", "vqa", env=env, timeout=300)
    s = pd.read_csv(tmp_path / "a" / "eval" / "summary.csv").set_index("metric")
    assert json.loads(s.loc["vqa", "versions"])["zoo"] == _zoo_id(smoke) and s.loc["vqa", "n"] == 2
    r = _run("longalign-sample", tmp_path / "p.txt", tmp_path / "a", "--encoders", "base", "--steps", "3", env=env, check=False)
    assert r.returncode == 2 and "other settings (steps)" in r.stderr and "--resample" in r.stderr
    _run("longalign-sample", tmp_path / "p.txt", tmp_path / "a", "--encoders", "base", "--steps", "3", "--resample", env=env)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["steps"] == 3 and not (tmp_path / "a" / "eval").exists()
