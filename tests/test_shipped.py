"""The toy models that ship with the package: intact (SHA-256 of every file), the ones the default configs look up (a
config or code change that re-keys an entry without re-shipping it fails here), loaded from an empty cache without any
training, and as good as the toy world's claim T0 needs (the quality checks of 00a, read from the shipped manifests, so
that CI checks the default-size models and not only the smoke ones)."""
from dataclasses import asdict

import pytest

from longalign import toyworld as tw

CFG = tw.ZooConfig()
EXPECTED = {"oracle": tw.entry_path("oracle", asdict(CFG.oracle)).name, "vae": tw.entry_path("vae", tw._vae_key(CFG)).name,
            "clip": tw.entry_path("clip", tw._clip_key(CFG)).name, "t5": tw.entry_path("t5", tw._t5_key(CFG)).name,
            "unet": tw.entry_path("unet", tw._unet_key(CFG)).name, "t5_adapter": tw.entry_path("t5_adapter", tw._adapter_key(CFG)).name}


def test_shipped_entries_are_intact_and_current():
    found = tw.verify_shipped()
    assert not {k: v for k, v in found.items() if v}, "damaged shipped entries: rebuild them with tools/ship_models.py"
    missing = {role: name for role, name in EXPECTED.items() if name not in found}
    assert not missing, (f"the default zoo looks up {missing}, which do not ship (the config or CACHE_FORMAT changed since "
                         f"they were shipped): rebuild and ship them with tools/ship_models.py")


def test_default_zoo_loads_from_the_shipped_copies_without_training(tmp_path, monkeypatch):
    def no_training(*a, **k): raise AssertionError("trained although the model ships")
    monkeypatch.setattr(tw, "fit", no_training)
    zoo = tw.build_zoo(CFG, cache_dir=tmp_path, progress=False)
    assert {role: zoo.entries[role].name for role in EXPECTED} == EXPECTED
    assert all(tw.verify_entry(e) == [] for e in zoo.entries.values())
    pipe = zoo.pipeline()
    assert tuple(tw.sample(pipe, ["In the top left there is a circle."], steps=2).shape) == (1, 3, tw.IMAGE_SIZE, tw.IMAGE_SIZE)


def test_shipped_models_meet_00a_quality_checks():
    m = {role: tw.entry_metrics(tw.shipped_root() / name) for role, name in EXPECTED.items()}
    assert m["vae"]["oracle_accuracy_round_trip"] >= 0.95
    assert m["clip"]["r1_text_to_image"] >= 10 * 100 / m["clip"]["held_out"]
    assert m["t5_adapter"]["held_out_loss_t5_adapter"] < m["t5_adapter"]["held_out_loss_empty_prompt"]
    u = m["unet"]   # T0: the base follows the facts before the 77-token cut, not those after it
    assert u["oracle_before_cut"] >= 0.85, u
    assert u["oracle_after_cut_ci_low"] <= u["chance_after_cut"] + 0.05, u
    assert m["oracle"]["accuracy_clean"] >= 0.98


def test_every_shipped_model_is_a_notebook_call_that_loads_without_training(monkeypatch):
    """`experiments.toy_shipped_builds` (what tools/rebuild_shipped.sh builds: copies of the notebooks' calls, the README's main
    job's runs among them) resolves from the shipped copies alone, with nothing trained, to exactly the shipped entries."""
    from longalign import experiments, longsd, preference, rft
    def no_training(*a, **k): raise AssertionError("trained although the model should ship: run tools/rebuild_shipped.sh and ship")
    for module in (tw, preference, longsd): monkeypatch.setattr(module, "fit", no_training)
    built = experiments.check_shipped_builds()
    assert built == sorted(tw.verify_shipped()) and len(built) == len(experiments.toy_shipped_builds())   # one entry per build
    for name in built:
        if name.startswith("rft_"):     # every RFT run was evaluated at its start, half-way and its end
            evals = rft.read_run(tw.shipped_root() / name)[1]
            assert list(evals.step) == [0, 20, 40] and {"oracle_hits_all", "diversity"} <= set(evals.columns), name


def test_a_wheel_carries_every_shipped_file(tmp_path):
    """A non-editable install (`pip install .`, a wheel) gets every shipped file, however deep it lies (LoRA folders hold
    a t5_adapter/ one level below the others: a `shipped/*/*/*` pattern left those out)."""
    import subprocess, sys, zipfile
    from pathlib import Path
    root = Path(tw.__file__).parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(root.parent)], check=True)
    (wheel,) = tmp_path.glob("*.whl")
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("longalign/shipped/")}
    shipped = {p.relative_to(root.parent).as_posix() for p in (root / "shipped").rglob("*") if p.is_file()}
    assert len(shipped) > 100 and shipped <= in_wheel, sorted(shipped - in_wheel)
