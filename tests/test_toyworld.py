"The toy zoo at smoke size: builds, caches, reloads through the library loaders, rebuilds a corrupt entry, and the CLI works."
import json, os, subprocess, sys
import pytest
import torch

from longalign.core import load_role
from longalign.toyworld import ZooConfig, build_zoo, sample, entry_metrics


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(ZooConfig.smoke(), cache_dir=tmp_path_factory.mktemp("zoo"), progress=False)


def test_roles_load_through_load_role_overrides(zoo):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    unet = load_role("sd15", "unet", UNet2DConditionModel, overrides={"unet": str(zoo.path("unet"))})
    ref = zoo.load("unet")
    for (k, a), (_, b) in zip(unet.state_dict().items(), ref.state_dict().items()): assert torch.equal(a, b), k
    te = load_role("sd15", "text_encoder", CLIPTextModel, overrides={"text_encoder": str(zoo.path("text_encoder"))})
    clip = zoo.load("clip")
    ids = zoo.load("tokenizer")(["In the top left there is a circle."], return_tensors="pt").input_ids
    assert torch.allclose(te(input_ids=ids).last_hidden_state, clip.text_model(input_ids=ids).last_hidden_state, atol=1e-6)


def test_pipeline_samples_at_the_zoo_resolution_and_seeds_per_image(zoo):
    pipe = zoo.pipeline()
    a = sample(pipe, ["a red circle.", "a blue square.", "a green triangle."], steps=2, seed=3)
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    b = sample(pipe, ["a blue square."], steps=2, seed=4)          # image 1 of the first call used seed 3 + 1
    assert torch.allclose(a[1:2], b, atol=1e-5)
    assert not torch.allclose(a[0], a[1])


def test_cache_hit_and_corrupt_entry_rebuilt(zoo, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("LONGALIGN_NO_BUILD", "1")                         # a cache hit builds nothing (building would raise)
        again = build_zoo(zoo.cfg, cache_dir=zoo.cache_dir, progress=False)
    assert again.entries == zoo.entries
    weights = zoo.path("t5_adapter") / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-10] + b"0123456789")               # corrupt one entry
    build_zoo(zoo.cfg, cache_dir=zoo.cache_dir, progress=False)
    assert weights.read_bytes() == good                            # rebuilt deterministically, never loaded corrupt
    for name, e in zoo.entries.items(): assert isinstance(entry_metrics(e), dict), name


def test_zoo_cli(tmp_path):
    env = {**os.environ, "LONGALIGN_CACHE": str(tmp_path)}
    r = subprocess.run(["longalign-zoo", "--smoke"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    paths = dict(line.split(None, 1) for line in r.stdout.splitlines() if line.startswith(("unet ", "vae ", "t5_adapter ")))
    assert set(paths) == {"unet", "vae", "t5_adapter"}
    assert all(p.startswith(str(tmp_path)) for p in paths.values())
