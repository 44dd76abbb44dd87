"""Time and peak memory of one SFT step and one RFT step, per image, at toy and `sd15-arch` sizes.

Each (stage, preset) runs in a fresh process: build the models the stage trains (`sft.LongSD`, `rft.LongSDReward` with
LoRA on the UNet), run warm-up steps, then time `--steps` optimizer steps (forward, backward, AdamW) and record the peak
memory: the process's peak resident set on the CPU, `torch.cuda.max_memory_allocated` on a GPU. The toy world needs the
toy zoo (built if missing); `sd15-arch` uses SD-1.5's architectures with random weights, so nothing is downloaded.
On a GPU (`--device cuda`) `--resolution 512 --bf16` gives the paper's setting; its images/s can be set against the
paper's SFT budget (30k steps × 192 images in 12 h on 6 A100s ≈ 0.045 GPU-seconds per image).
Writes bench/results/train_steps.json and .md (or `--out`).

    python bench/train_steps.py [--steps 3] [--device cpu|cuda] [--resolution 32] [--bf16]
"""
import argparse, json, multiprocessing as mp, platform, resource, time
from pathlib import Path


def one(stage, preset, batch, steps, device, resolution, bf16, sampler, q):
    import torch
    from longalign.core import package_versions
    from longalign.sft import LongSD
    from longalign.longsd import add_unet_lora, load_long_sd
    torch.manual_seed(0)
    pipe, enc = load_long_sd(preset, "clip-cat")
    if resolution and preset != "toy": pipe.unet.register_to_config(sample_size=resolution // 8)
    res = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    add_unet_lora(pipe.unet, preset)
    from longalign.toyworld import long_caption, scenes
    import random
    caps = [long_caption(s, random.Random(i)).text for i, s in enumerate(scenes(batch, seed=5))]
    desc = ""
    if stage == "sft":
        model = LongSD(pipe, enc, cache_embeddings=False)
        pixels = torch.rand(batch, 3, res, res)
        step = lambda: model(pixels.to(device), caps)
    else:
        from longalign.rft import LongSDReward, PreferenceReward, dataset_direction, load_reward_model, RFTConfig
        cfg = RFTConfig.for_preset(preset, **(dict(zip(("sampler_steps", "grad_steps"), map(int, sampler.split(",")))) if sampler else {}))
        pm = load_reward_model(preset)
        reward = PreferenceReward(pm, cfg.omega, dataset_direction(pm, caps))
        model = LongSDReward(pipe, enc, reward, cfg.sampler_steps, cfg.grad_steps, cfg.guidance)
        step = lambda: model(caps, torch.Generator().manual_seed(0))["loss"]
        desc = f"N={cfg.sampler_steps}, K={cfg.grad_steps}"
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dtype = torch.bfloat16 if bf16 else torch.float32
    def run():
        with torch.autocast(device_type=device, dtype=dtype, enabled=bf16):
            loss = step()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    run()                                                    # warm-up
    if device == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps): run()
    if device == "cuda": torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(dict(stage=stage, preset=preset, batch=batch, resolution=res, device=device, bf16=bf16, sampler=desc,
               seconds_per_step=round(sec, 3), seconds_per_image=round(sec / batch, 4), images_per_second=round(batch / sec, 2),
               peak_mib=round(peak), peak_mib_per_image=round(peak / batch, 1),
               versions={k: v for k, v in package_versions().items() if k in ("torch", "diffusers", "peft")}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=0, help="sd15-arch image side (0: the preset's 32 px)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--presets", default="toy,sd15-arch")
    ap.add_argument("--sampler", default="", help="RFT sampler 'N,K' (default: the preset's; the paper's is 50,5)")
    ap.add_argument("--batches", default="", help="'sft,rft' batch sizes for sd15-arch (default 2,1)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_steps"))
    a = ap.parse_args()
    sb, rb = map(int, a.batches.split(",")) if a.batches else (2, 1)
    batches = {"toy": {"sft": 32, "rft": 8}, "sd15-arch": {"sft": sb, "rft": rb}}
    rows, ctx = [], mp.get_context("spawn")
    for preset in a.presets.split(","):
        for stage in ("sft", "rft"):
            q = ctx.Queue()
            p = ctx.Process(target=one, args=(stage, preset, batches[preset][stage], a.steps, a.device, a.resolution, a.bf16, a.sampler, q))
            p.start(); row = q.get(); p.join()
            print(row); rows.append(row)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "steps": a.steps, "command": "python bench/train_steps.py " +
            " ".join(f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(a).items() if k != "out" and v not in (False, 0, None, 3, "cpu", "", "toy,sd15-arch"))}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| stage | preset | batch | px | device | s / step | s / image | images / s | peak MiB | peak MiB / image |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']}{' (' + r['sampler'] + ')' if r['sampler'] else ''} | {r['preset']} | {r['batch']} | {r['resolution']} | {r['device']}{' bf16' if r['bf16'] else ''} | "
              f"{r['seconds_per_step']} | {r['seconds_per_image']} | {r['images_per_second']} | {r['peak_mib']} | {r['peak_mib_per_image']} |"
              for r in rows]
    lines.append(f"\n{a.steps} timed steps after one warm-up, each (stage, preset) in a fresh process. Peak memory: the process's "
                 f"peak resident set (CPU; includes the models) or `torch.cuda.max_memory_allocated` (GPU). `{meta['command']}`")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
