"""One SFT step, one RFT step from its weights and `longalign-sample` with both, on SDXL's dimensions (`sdxl-arch`: 2048-d
cross-attention from the CLIP-L and bigG towers, pooled-text and size add-embeds; random weights, 32 px, CPU): the SDXL
path through the same code as SD-1.5, on every change. One process, so the ~6 GB of random weights are freed after it."""
import json, subprocess, sys, textwrap
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file
from PIL import Image

TARGETS = {"conv1", "conv2", "time_emb_proj", "conv_shortcut", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj"}


def _suffixes(weights: dict) -> set:
    mods = {k.split(".lora")[0] for k in weights}
    return {next((t for t in ("to_out.0", "ff.net.0.proj") if m.endswith(t)), m.rsplit(".", 1)[-1]) for m in mods}


def test_sft_rft_and_sampling_with_sdxl_architectures(tmp_path):
    code = """
        from longalign.sft import SFTConfig, image_caption_data, train_sft
        from longalign.rft import run_rft
        from longalign.evaluation import sample_cli
        from longalign.toyworld import long_caption_dataset
        from longalign.experiments import toy_prompts
        data = image_caption_data(long_caption_dataset(2, seed=0), 32)
        train_sft("sft", data, SFTConfig.for_preset("sdxl-arch", batch_size=2), "sdxl-arch", progress=False, cpu=True)
        prompts = toy_prompts(8)
        run_rft("rft", "sdxl-arch", omega=0.3, prompts=prompts, sft_lora="sft/lora", progress=False)
        open("prompts.txt", "w").write(prompts[0] + "\\n" + prompts[1] + "\\n")
        sample_cli(["prompts.txt", "samples", "--preset", "sdxl-arch", "--lora", "sft/lora", "--lora", "rft/lora", "--steps", "2"])
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    for run in ("sft", "rft"):
        w = load_file(tmp_path / run / "lora" / "pytorch_lora_weights.safetensors")
        assert _suffixes(w) == TARGETS, run
        a_k = next(v for k, v in w.items() if k.endswith("attn2.to_k.lora.down.weight"))
        assert tuple(a_k.shape) == (32, 2048), run                   # rank 32 on SDXL's 2048-d context (768 + 1280)
        assert any(v.abs().sum() > 0 for k, v in w.items() if ".lora.up." in k), run   # B starts at zero: the step moved it
        cfg = json.loads((tmp_path / run / "config.json").read_text())
        enc = cfg["settings"]["encoding"]
        assert (enc["towers"], enc["layer"], enc["pooled"], enc["zero_negative"]) == (2, "penultimate", "truncate", True), run
    sft = pd.read_csv(tmp_path / "sft" / "metrics.csv")
    assert sft[sft.name == "loss"].value.between(0, 10).all() and sft.step.max() == 1
    m = pd.read_csv(tmp_path / "rft" / "metrics.csv").pivot_table(index="step", columns="name", values="value")
    assert list(m.index) == [1] and m.loc[1, "grad_norm"] > 0
    assert abs(m.loc[1, "loss"] - 0.5 * (1 - m.loc[1, "reward"])) < 1e-6    # loss = (1 - reward) / 2
    assert json.loads((tmp_path / "rft" / "config.json").read_text())["settings"]["sft_lora"] == "sft/lora"
    rows = [json.loads(l) for l in (tmp_path / "samples" / "prompts.jsonl").read_text().splitlines()]
    man = json.loads((tmp_path / "samples" / "manifest.json").read_text())
    assert man["encoders"] == "clip-cat" and len(rows) == 2                 # an SDXL preset's default encoding
    for row in rows:
        assert Image.open(tmp_path / "samples" / f"{row['id']}.png").size == (32, 32)
