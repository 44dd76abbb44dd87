"""Peak memory and step time of the RFT sampler against the number of sampler steps N: truncated (DRTune) vs full backprop.

Paper §2.3 / §4.2: the reward is backpropagated through K = 5 of the N sampler steps only, with the UNet's input detached
(stop-gradient) and the K UNet calls gradient-checkpointed, so memory should not depend on N and time should be about
N forward passes + K recomputed forward/backward passes. Full backprop (K = N, no stop-gradient, no checkpointing) keeps
every UNet call's activations, so memory and time should grow with N.

Each (mode, N) runs in a fresh process: load the preset's long-prompt SD (`sft.load_long_sd`), add the LoRA the RFT stage
trains (`sft.add_unet_lora`), build `rft.LongSDReward` with the mode's `steps`, `grad_steps`, `stop_grad` and `checkpoint`,
and time one step = `LongSDReward.sample` (the package's `drtune_sample` with CFG, then the VAE decode) + backward of a
scalar loss on the image (its mean; `--reward` uses the package's RFT loss with the preset's Denscore instead). One warm-up
step, then the median of `--repeats` steps. Peak memory above the model: CPU, the process's peak resident set
(`ru_maxrss`) after the steps minus its resident set once the models are loaded; CUDA, `torch.cuda.max_memory_allocated`
(reset after the warm-up) minus the memory allocated before it. Each process also times one guided UNet call without
gradient (t_f) and one with forward + backward (t_fb) at the same batch, giving the cost model
truncated ≈ N·t_f + K·t_fb, full ≈ N·t_fb (plus the VAE decode and the text encoding in both).
Writes bench/results/rft.json and .md (or `--out`).

    python bench/rft.py [--preset toy|sd15-arch] [--resolution 64] [--ns 10,25,50] [--k 5] [--batch 8] [--threads 1] [--device cuda]
"""
import argparse, json, multiprocessing as mp, platform, resource, statistics, time
from pathlib import Path


def rss_mib():
    "The process's current resident set (Linux)."
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024


def one(mode, N, a, q):
    import random, torch
    from longalign.core import package_versions
    from longalign.rft import LongSDReward, guided_eps
    from longalign.longsd import add_unet_lora, load_long_sd
    from longalign.toyworld import long_caption, scenes
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    pipe, enc = load_long_sd(a.preset, "clip-cat")
    if a.resolution and a.preset != "toy": pipe.unet.register_to_config(sample_size=a.resolution // 8)
    add_unet_lora(pipe.unet, a.preset)
    caps = [long_caption(s, random.Random(i)).text for i, s in enumerate(scenes(a.batch, seed=5))]
    reward = None
    if a.reward:
        from longalign.rft import PreferenceReward, dataset_direction, load_reward_model
        pm = load_reward_model(a.preset)
        reward = PreferenceReward(pm, 0.3, dataset_direction(pm, caps))
    K = a.k if mode == "truncated" else N
    model = LongSDReward(pipe, enc, reward, N, K, a.guidance, stop_grad=mode == "truncated", checkpoint=mode == "truncated")
    model.to(a.device)
    model.unet.train()                                     # LoRA dropout on, as in training (the frozen parts stay in eval)
    if reward is not None: reward.to(a.device).train()
    cuda = a.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        gen = torch.Generator().manual_seed(0)                 # the same K step indices every time
        loss = model(caps, gen)["loss"] if reward is not None else model.sample(caps, gen).mean()
        loss.backward()
        model.unet.zero_grad(set_to_none=True)

    model.embeds(caps); model.negative()                     # fill the encoder's caches before the baseline
    sync()
    base_rss, load_peak = rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base_cuda = torch.cuda.memory_allocated() / 2**20 if cuda else 0
    step()                                                   # warm-up
    if cuda: sync(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 - base_cuda if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss)

    # unit costs of one guided UNet call at this batch: without gradient (t_f), and forward + backward (t_fb)
    c = model.unet.config
    x = torch.randn(a.batch, c.in_channels, c.sample_size, c.sample_size, device=a.device)
    cond, uncond = model.embeds(caps), model.negative()[0].expand(a.batch, -1, -1)
    t = model.scheduler.timesteps[0]
    def unit(grad):
        t0 = time.perf_counter()
        if grad: guided_eps(model.unet, x, t, cond, uncond, a.guidance).mean().backward(); model.unet.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(): guided_eps(model.unet, x, t, cond, uncond, a.guidance)
        sync(); return time.perf_counter() - t0
    unit(True)
    t_f = statistics.median(unit(False) for _ in range(5))
    t_fb = statistics.median(unit(True) for _ in range(3))
    q.put(dict(mode=mode, N=N, K=K, stop_grad=model.stop_grad, checkpoint=model.checkpoint, preset=a.preset, batch=a.batch,
               px=c.sample_size * pipe.vae_scale_factor, device=a.device, loss="reward" if reward is not None else "image mean",
               seconds_per_step=round(statistics.median(times), 3), times=[round(s, 3) for s in times],
               peak_mib_above_model=round(peak, 1), rss_after_load_mib=round(base_rss), peak_during_load_mib=round(load_peak),
               unet_calls_with_grad=K, t_f=round(t_f, 4), t_fb=round(t_fb, 4),
               model_seconds=round(N * t_f + K * t_fb if mode == "truncated" else N * t_fb, 3),
               versions={k: v for k, v in package_versions().items() if k in ("torch", "diffusers", "peft")}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--resolution", type=int, default=0, help="sd15-arch image side (0: the preset's)")
    ap.add_argument("--ns", default="10,25,50", help="sampler steps N")
    ap.add_argument("--k", type=int, default=5, help="gradient steps K of the truncated mode")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); one thread is less "
                    "disturbed by other processes on a small shared machine")
    ap.add_argument("--reward", action="store_true", help="loss: the package's RFT loss (Denscore) instead of the image mean")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rft"))
    a = ap.parse_args()
    defaults = {k: ap.get_default(k) for k in vars(a)}
    ns, rows, ctx, t0 = [int(n) for n in a.ns.split(",")], [], mp.get_context("spawn"), time.time()
    for mode in ("truncated", "full"):
        for N in ns:
            q = ctx.Queue()
            p = ctx.Process(target=one, args=(mode, N, a, q))
            p.start(); row = q.get(); p.join()
            print({k: v for k, v in row.items() if k != "versions"}, flush=True); rows.append(row)
    for r in rows:                                            # ratios to the smallest N of the same mode
        ref = next(s for s in rows if s["mode"] == r["mode"] and s["N"] == ns[0])
        r["time_ratio"] = round(r["seconds_per_step"] / ref["seconds_per_step"], 2)
        r["memory_ratio"] = round(r["peak_mib_above_model"] / ref["peak_mib_above_model"], 2)
    cmd = "python bench/rft.py" + "".join(f" --{k}" if v is True else f" --{k} {v}" for k, v in vars(a).items()
                                          if k != "out" and v != defaults[k])
    meta = {"machine": platform.processor() or platform.machine(), "command": cmd, "wall_seconds": round(time.time() - t0)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    mem = "peak MiB above model (`max_memory_allocated`)" if a.device == "cuda" else "peak RSS MiB above model"
    lines = [f"| mode | N | UNet calls with grad | s / step | time / N={ns[0]} | N·t_f + K·t_fb (s) | {mem} | memory / N={ns[0]} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"truncated (K={r['K']}, stop-grad, ckpt)" if r["mode"] == "truncated" else "full backprop (K=N)"
        lines.append(f"| {name} | {r['N']} | {r['unet_calls_with_grad']} | {r['seconds_per_step']} | {r['time_ratio']} | "
                     f"{r['model_seconds']} | {r['peak_mib_above_model']:.0f} | {r['memory_ratio']} |")
    r0 = rows[0]
    dev = f"{r0['device']} (torch threads: {a.threads})" if a.device == "cpu" and a.threads else r0["device"]
    lines.append(f"\n{r0['preset']}, {r0['px']} px, batch {r0['batch']}, CFG {a.guidance} (two branches per UNet call), "
                 f"{dev}, loss: {r0['loss']}. One warm-up step, then the median of {a.repeats}; each (mode, N) in a "
                 f"fresh process. Memory: " + ("`torch.cuda.max_memory_allocated` during the timed steps minus the memory "
                 "allocated with the models loaded." if a.device == "cuda" else "the process's peak resident set "
                 "(`ru_maxrss`, warm-up included) minus its resident set after loading the models and LoRA; it includes "
                 "the no-grad forward passes' transient buffers and allocator slack, not only saved activations.") +
                 " Cost model: t_f = one guided UNet call without gradient, t_fb = one with forward + backward, both "
                 f"measured in the same process; it leaves out the VAE decode and the text encoding. `{cmd}` "
                 f"({meta['wall_seconds']} s wall)")
    def change(mode):
        lo, hi = [next(r for r in rows if r["mode"] == mode and r["N"] == n) for n in (ns[0], ns[-1])]
        return (f"{mode}: memory ×{hi['memory_ratio']} ({lo['peak_mib_above_model']:.0f} → {hi['peak_mib_above_model']:.0f} MiB), "
                f"time ×{hi['time_ratio']} (cost model ×{hi['model_seconds'] / lo['model_seconds']:.2f})")
    lines.append(f"\nFrom N={ns[0]} to N={ns[-1]} (×{ns[-1] / ns[0]:g} steps): {change('truncated')}; {change('full')}.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
