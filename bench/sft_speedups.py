"""The SFT step's speed-ups, each against today's step in one run: cached latents and text, channels-last, fused AdamW.

Each variant runs in a fresh process on the same batch: build the models the step trains (`sft.LongSD` with LoRA on the
UNet), one warm-up step, then `--steps` timed optimizer steps (forward, backward, AdamW) and the process's peak memory.
`base` is the step as `train_sft` runs it on images and captions: the frozen VAE and text encoders run every step.
`cached` reads the VAE's latent mean / std and the frozen text parts that `cache_sft_features` wrote once, so the step is
the UNet (and the T5 adapter) only; `+cl` puts the UNet and latents in channels-last memory; `+fused` uses AdamW's fused
kernel. Every variant computes the same loss (tests in 04_sft). Writes bench/results/sft_speedups.json and .md.

    python bench/sft_speedups.py [--preset sd15-arch] [--encoders clip-cat,clip+t5] [--batch 2] [--steps 3] [--rounds 2] [--device cpu]
"""
import argparse, json, multiprocessing as mp, platform, resource, tempfile, time
from pathlib import Path

VARIANTS = {"base": {}, "cached": dict(cached=True), "cached+cl": dict(cached=True, channels_last=True),
            "cached+fused": dict(cached=True, fused=True), "cached+cl+fused": dict(cached=True, channels_last=True, fused=True)}


def one(variant, preset, encoders, batch, steps, device, q):
    import random, torch
    from longalign.core import package_versions
    from longalign.experiments import toy_prompts
    from longalign.longsd import add_unet_lora, load_long_sd
    from longalign.sft import LongSD, cache_sft_features
    opts = VARIANTS[variant]
    torch.manual_seed(0)
    pipe, enc = load_long_sd(preset, encoders)
    add_unet_lora(pipe.unet, preset)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    caps, pixels = toy_prompts(batch, seed=5), torch.rand(batch, 3, res, res)
    model = LongSD(pipe, enc, cache_embeddings=False)
    if opts.get("cached"):
        with tempfile.TemporaryDirectory() as d:
            data = cache_sft_features([{"pixels": p, "caption": c} for p, c in zip(pixels, caps)], d, pipe, enc, progress=False)
            rows = [data[i] for i in range(batch)]
            model.use_cache(data)
        batch_kw = {k: torch.stack([r[k] for r in rows]).to(device) for k in rows[0]}
    else: batch_kw = dict(pixels=pixels.to(device), captions=caps)
    if opts.get("channels_last"):
        model.unet.to(memory_format=torch.channels_last)
        for k in ("latent_mean", "latent_std"): batch_kw[k] = batch_kw[k].contiguous(memory_format=torch.channels_last)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, **({"fused": True} if opts.get("fused") else {}))
    def run():
        model(**batch_kw).backward(); opt.step(); opt.zero_grad(set_to_none=True)
    run()                                                    # warm-up
    if device == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps): run()
    if device == "cuda": torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(dict(variant=variant, preset=preset, encoders=encoders, batch=batch, resolution=res, device=device,
               seconds_per_step=round(sec, 3), seconds_per_image=round(sec / batch, 4), peak_mib=round(peak),
               threads=torch.get_num_threads(), versions={k: v for k, v in package_versions().items() if k in ("torch", "diffusers", "peft")}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="sd15-arch")
    ap.add_argument("--encoders", default="clip-cat,clip+t5")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all variants, interleaved; each row keeps its fastest round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sft_speedups"))
    a = ap.parse_args()
    if "base" not in a.variants.split(","): ap.error("--variants must include base: every speed-up is measured against it")
    best, ctx = {}, mp.get_context("spawn")
    for _ in range(a.rounds):                # interleaved rounds: a slow spell of a shared machine hits every variant alike
        for encoders in a.encoders.split(","):
            for variant in a.variants.split(","):
                q = ctx.Queue()
                p = ctx.Process(target=one, args=(variant, a.preset, encoders, a.batch, a.steps, a.device, q))
                p.start()
                while True:                  # a child that dies (out of memory, a bug) stops the run instead of hanging it
                    try: row = q.get(timeout=5); break
                    except Exception:
                        if not p.is_alive(): raise SystemExit(f"{encoders} {variant}: the process died (exit code {p.exitcode})")
                p.join()
                print(row, flush=True)
                key = (encoders, variant)
                if key not in best or row["seconds_per_step"] < best[key]["seconds_per_step"]: best[key] = row
    rows = list(best.values())
    for r in rows: r["speedup"] = round(best[(r["encoders"], "base")]["seconds_per_step"] / r["seconds_per_step"], 2)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    cmd = f"python bench/sft_speedups.py --preset {a.preset} --encoders {a.encoders} --batch {a.batch} --steps {a.steps} --rounds {a.rounds} --device {a.device}"
    meta = {"machine": platform.processor() or platform.machine(), "command": cmd}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| encoders | step | batch | px | device | s / step | s / image | speed-up vs base | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['encoders']} | {r['variant']} | {r['batch']} | {r['resolution']} | {r['device']} | {r['seconds_per_step']} | "
              f"{r['seconds_per_image']} | {r['speedup']}x | {r['peak_mib']} |" for r in rows]
    lines.append(f"\n{a.steps} timed steps after one warm-up, each row in a fresh process ({rows[0]['threads']} torch threads), the fastest of "
                 f"{a.rounds} interleaved rounds; the speed-up is against `base` of the same encoders in this run. `{cmd}`")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
