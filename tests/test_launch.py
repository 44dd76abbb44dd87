"""The GPU-box route, on this CPU: `papermill nbs/04_sft.ipynb … -p preset sd15 -p num_processes 2` and then 05 from its
LoRA, each through the notebook's own `notebook_launcher` cell, with every model a tiny random-weight folder in SD-1.5's
layout (passed as `overrides`) and SFT data in the LongAlign layout (images + a .jsonl of relative paths). Nothing may
create an Accelerator in the kernel before the launch, the toy world must not be built, and the global batch must come
out as processes × micro-batch × accumulation."""
import json, os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _tiny_sd15(folder: Path) -> dict:
    "Random-weight SD-1.5-layout role folders (a VAE with 16× down-sampling, so 512 px is 32×32 latents) and a tiny reward CLIP."
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel
    from longalign.longsd import _SD_SCHEDULE
    from longalign.toyworld import clip_tokenizer
    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77)
    roles = {r: folder / r for r in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "reward")}
    UNet2DConditionModel(sample_size=32, layers_per_block=1, block_out_channels=(8, 16), cross_attention_dim=32,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                         attention_head_dim=2, norm_num_groups=4).save_pretrained(roles["unet"])
    AutoencoderKL(block_out_channels=(4,) * 5, down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
                  layers_per_block=1, norm_num_groups=2, latent_channels=4, sample_size=512).save_pretrained(roles["vae"])
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(roles["text_encoder"])
    clip_tokenizer().save_pretrained(roles["tokenizer"])
    DDIMScheduler(**_SD_SCHEDULE).save_pretrained(roles["scheduler"])
    CLIPModel(CLIPConfig(text_config=text, vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                              image_size=224, patch_size=32), projection_dim=32)).save_pretrained(roles["reward"])
    clip_tokenizer().save_pretrained(roles["reward"])
    return {r: str(p) for r, p in roles.items()}


def _longalign_layout(folder: Path, captions: list) -> Path:
    "The official data layout: image files and a .jsonl whose `image` paths are relative to it."
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    with open(folder / "data.jsonl", "w") as f:
        for i, c in enumerate(captions):
            (folder / "images").mkdir(exist_ok=True)
            px = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()   # not square: the loader centre-crops
            Image.fromarray(px).save(folder / "images" / f"{i}.png")
            f.write(json.dumps({"image": f"images/{i}.png", "caption": c}) + "\n")
    return folder / "data.jsonl"


def _papermill(nb: str, out: Path, cwd: Path, env: dict, **params):
    args = [sys.executable, "-m", "papermill", "-k", "python3", str(ROOT / "nbs" / nb), str(out), "--cwd", str(cwd)]
    for k, v in params.items(): args += ["-p", k, str(v)]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-6000:])
    return r


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-box")
    roles = _tiny_sd15(tmp / "models")
    from longalign.experiments import toy_prompts
    captions = toy_prompts(4)
    data = _longalign_layout(tmp / "data", captions)
    (tmp / "prompts.txt").write_text("\n".join(captions) + "\n")
    cache = tmp / "empty-cache"; cache.mkdir()
    env = {**os.environ, "LONGALIGN_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("IN_TEST", None)                      # the real-world path, not the toy smoke sizes
    return dict(tmp=tmp, roles=roles, data=data, prompts=tmp / "prompts.txt", cache=cache, env=env)


def test_sft_then_rft_launch_two_processes_from_the_notebooks(box):
    tmp, roles = box["tmp"], box["roles"]
    overrides = json.dumps({r: roles[r] for r in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")})
    _papermill("04_sft.ipynb", tmp / "04.ipynb", tmp, box["env"], preset="sd15", encodings="clip-cat", data=box["data"], steps=2,
               batch_size=4, per_device_batch=1, num_processes=2, overrides=overrides, output_dir=tmp / "sft")
    sft = json.loads((tmp / "sft" / "config.json").read_text())
    assert sft["layout"] == {"num_processes": 2, "per_device_batch": 1, "grad_accum": 2}   # 4 = 2 processes × 1 × 2 micro-batches
    assert sft["train"]["batch_size"] == 4 and sft["train"]["mixed_precision"] == "bf16"      # the paper's settings otherwise
    m = pd.read_csv(tmp / "sft" / "metrics.csv")
    assert sorted(m.step.unique()) == [1, 2] and m[m.name == "loss"].value.between(0, 10).all()
    lora = load_file(tmp / "sft" / "lora" / "pytorch_lora_weights.safetensors")
    assert any(v.abs().sum() > 0 for k, v in lora.items() if ".lora.up." in k)                 # it trained
    assert list(box["cache"].iterdir()) == []                                                  # no toy world was built

    _papermill("05_rft.ipynb", tmp / "05.ipynb", tmp, box["env"], preset="sd15", prompts=box["prompts"], sft_lora=tmp / "sft" / "lora",
               reward_model=roles["reward"], steps=1, batch_size=2, num_processes=2, overrides=overrides, output_dir=tmp / "rft",
               sampler_steps=4, grad_steps=2, n_val=2)
    rft = json.loads((tmp / "rft" / "config.json").read_text())
    assert rft["layout"] == {"num_processes": 2, "per_device_batch": 1, "grad_accum": 1}
    assert rft["train"]["lr"] == 3e-5 and rft["train"]["mixed_precision"] == "bf16"            # the paper's settings otherwise
    assert rft["settings"]["rft"]["sampler_steps"] == 4 and rft["settings"]["rft"]["grad_steps"] == 2   # N, K from the parameters
    assert (tmp / "rft" / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert sorted(p.name for p in (tmp / "rft" / "samples").glob("*.png")) == ["step_000000.png", "step_000001.png"]
    assert list(box["cache"].iterdir()) == []


def test_bad_global_batch_fails_before_launch(box):
    "A global batch that the processes cannot share is refused with what to change, before any process starts."
    tmp = box["tmp"]
    args = [sys.executable, "-m", "papermill", "-k", "python3", str(ROOT / "nbs" / "05_rft.ipynb"), str(tmp / "bad.ipynb"), "--cwd", str(tmp),
            "-p", "preset", "sd15", "-p", "batch_size", "3", "-p", "num_processes", "2", "-p", "prompts", str(box["prompts"]),
            "-p", "output_dir", str(tmp / "bad")]
    r = subprocess.run(args, capture_output=True, text=True, env=box["env"], timeout=600)
    assert r.returncode != 0 and "batch_size=3 (the global batch) must be a multiple of the 2 processes" in r.stdout + r.stderr
    assert not (tmp / "bad").exists()
