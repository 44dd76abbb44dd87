"""SDXL through the same code as SD-1.5. On SDXL's dimensions (`sdxl-arch`: 2048-d cross-attention from the CLIP-L and bigG
towers, pooled-text and size add-embeds; random weights, 32 px, CPU): one SFT step, then one RFT step from its weights
(loaded and fused into the SDXL pipeline). One process, so the ~6 GB of random weights are freed after it. And
`longalign-sample --preset sdxl` offline: the SDXL default encoding, and a clean error naming the role to download."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file

TARGETS = {"conv1", "conv2", "time_emb_proj", "conv_shortcut", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj"}


def _suffixes(weights: dict) -> set:
    mods = {k.split(".lora")[0] for k in weights}
    return {next((t for t in ("to_out.0", "ff.net.0.proj") if m.endswith(t)), m.rsplit(".", 1)[-1]) for m in mods}


def test_sft_then_rft_with_sdxl_architectures(tmp_path):
    code = """
        from longalign.sft import SFTConfig, image_caption_data, train_sft
        from longalign.rft import run_rft
        from longalign.toyworld import long_caption_dataset
        from longalign.experiments import toy_prompts
        data = image_caption_data(long_caption_dataset(2, seed=0), 32)
        train_sft("sft", data, SFTConfig.for_preset("sdxl-arch", batch_size=2), "sdxl-arch", progress=False, cpu=True)
        run_rft("rft", "sdxl-arch", omega=0.3, prompts=toy_prompts(2), sft_lora="sft/lora", progress=False)
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    for run in ("sft", "rft"):
        w = load_file(tmp_path / run / "lora" / "pytorch_lora_weights.safetensors")
        assert _suffixes(w) == TARGETS, run
        a_k = next(v for k, v in w.items() if k.endswith("attn2.to_k.lora.down.weight"))
        assert tuple(a_k.shape) == (32, 2048), run                   # rank 32 on SDXL's 2048-d context (768 + 1280)
        assert any(v.abs().sum() > 0 for k, v in w.items() if ".lora.up." in k), run   # B starts at zero: the step moved it
        enc = json.loads((tmp_path / run / "config.json").read_text())["settings"]["encoding"]
        assert (enc["towers"], enc["layer"], enc["pooled"], enc["zero_negative"]) == (2, "penultimate", "truncate", True), run
    sft = pd.read_csv(tmp_path / "sft" / "metrics.csv")
    assert (sft.name == "loss").any() and sft[sft.name == "loss"].value.between(0, 10).all() and sft.step.max() == 1
    m = pd.read_csv(tmp_path / "rft" / "metrics.csv").pivot_table(index="step", columns="name", values="value")
    assert list(m.index) == [1] and m.loc[1, "grad_norm"] > 0
    assert abs(m.loc[1, "loss"] - 0.5 * (1 - m.loc[1, "reward"])) < 1e-6    # loss = (1 - reward) / 2
    assert json.loads((tmp_path / "rft" / "config.json").read_text())["settings"]["sft_lora"] == "sft/lora"


def test_sample_cli_sdxl_offline_names_the_role_and_defaults_to_both_towers(tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_text("A red cube on the left. A blue ball in the middle.\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(Path(sys.executable).parent / "longalign-sample"), str(tmp_path / "p.txt"), str(tmp_path / "out"),
                        "--preset", "sdxl"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "preset 'sdxl', role 'unet'" in r.stderr and "stabilityai/stable-diffusion-xl-base-1.0" in r.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()        # no image, no manifest: nothing stands in the rerun's way
    import longalign.evaluation as ev                                # the encoders the CLI asks for with --preset sdxl
    asked = {}
    def record(out, rows, preset, encoders, *a, **k): asked.update(preset=preset, encoders=encoders); return Path(out)
    monkeypatch.setattr(ev, "sample_folder", record)
    ev.sample_cli([str(tmp_path / "p.txt"), str(tmp_path / "out2"), "--preset", "sdxl"])
    assert asked == {"preset": "sdxl", "encoders": "clip-cat"}
