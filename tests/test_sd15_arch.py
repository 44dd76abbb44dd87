"""One SFT step and one RFT step with SD-1.5's architectures (UNet, VAE, CLIP-L, T5-large + LaVi-Bridge adapter, a
CLIP-H-sized reward), random weights, 32 px, on the CPU: the 768/1024-dimension paths and the real LoRA targets run on
every change. Each test runs in its own process so the ~8 GB of random weights are freed between them."""
import json, subprocess, sys, textwrap
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

TARGETS = {"conv1", "conv2", "time_emb_proj", "conv_shortcut", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj"}


def _run(code: str, tmp_path: Path):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]


def _lora(folder: Path) -> dict:
    return load_file(folder / "pytorch_lora_weights.safetensors")


def _suffixes(weights: dict) -> set:
    mods = {k.split(".lora")[0] for k in weights}
    return {next((t for t in ("to_out.0", "ff.net.0.proj") if m.endswith(t)), m.rsplit(".", 1)[-1]) for m in mods}


def test_one_sft_step_with_sd15_architectures(tmp_path):
    _run("""
        from longalign.sft import SFTConfig, image_caption_data, train_sft
        from longalign.toyworld import long_caption_dataset
        data = image_caption_data(long_caption_dataset(2, seed=0), 32)
        train_sft("run", data, SFTConfig.for_preset("sd15-arch", encoders="clip+t5", batch_size=2), "sd15-arch", progress=False, cpu=True)
    """, tmp_path)
    run = tmp_path / "run"
    w = _lora(run / "lora")
    assert _suffixes(w) == TARGETS
    a_k = next(v for k, v in w.items() if k.endswith("attn2.to_k.lora.down.weight"))
    assert tuple(a_k.shape) == (32, 768)                          # rank 32 on the 768-d CLIP-L / adapter context
    assert any(v.abs().sum() > 0 for k, v in w.items() if ".lora.up." in k)   # B ('up') starts at zero: the step changed it
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["settings"]["encoding"]["encoders"] == "clip+t5" and cfg["train"]["lr"] == 3e-5
    adapter = load_file(next((run / "lora" / "t5_adapter").glob("*.safetensors")))
    assert adapter["ff1.net.0.proj.weight"].shape[1] == 1024 and adapter["ff2.net.2.weight"].shape[0] == 768   # T5-large 1024 -> UNet 768
    assert adapter["norm2.weight"].shape[0] == 896                  # through the released LaVi-Bridge adapter's 896 (was 1024)
    m = pd.read_csv(run / "metrics.csv")
    assert m[m.name == "loss"].value.between(0, 10).all() and m.step.max() == 1


def test_one_rft_step_with_sd15_architectures(tmp_path):
    _run("""
        from longalign.experiments import toy_prompts
        from longalign.rft import run_rft
        run_rft("run", "sd15-arch", omega=0.3, prompts=toy_prompts(2), progress=False)   # V from 2 prompts: the CLIP-H text tower is slow
    """, tmp_path)
    run = tmp_path / "run"
    w = _lora(run / "lora")
    assert _suffixes(w) == TARGETS
    assert any(v.abs().sum() > 0 for k, v in w.items() if ".lora.up." in k)
    cfg = json.loads((run / "config.json").read_text())
    rft = cfg["settings"]["rft"]
    assert (rft["sampler_steps"], rft["grad_steps"], rft["omega"]) == (2, 1, 0.3)
    m = pd.read_csv(run / "metrics.csv").pivot_table(index="step", columns="name", values="value")
    assert list(m.index) == [1]
    for name in ("loss", "reward", "denscore", "denscore_o", "eta", "irrelevant", "grad_norm"):
        assert pd.notna(m.loc[1, name]), name
    assert abs(m.loc[1, "loss"] - 0.5 * (1 - m.loc[1, "reward"])) < 1e-6   # loss = (1 - reward) / 2
    assert m.loc[1, "grad_norm"] > 0
