"""Time and peak memory of one SFT step and one RFT step, per image, and of each speed-up against today's step, in one run.

Each stage (SFT, RFT) is a ladder: its first row is the step as it ran before the speed-ups, and each later row adds one
change to the row above it, so a row's `× first` is the speed-up of everything up to it, measured in the same run:

- SFT: `today` (images and captions: the frozen VAE and text encoder run every step) → `cached` (the latents and frozen
  text parts `cache_sft_features` wrote once: the step is the UNet) → `bf16 frozen` (the frozen weights stored in bf16
  while training, `core.frozen_weights_in`, what `fit` does under mixed precision; only with `--bf16`) → `channels-last`
  → `fused AdamW` → `compiled` (`torch.compile` of the UNet, inductor; its compile time is reported apart).
- RFT (N, K): `today` → `bf16 frozen` (UNet, VAE, text encoder and reward model; `--bf16` only) → `no checkpointing` (the
  K UNet calls keep their activations instead of recomputing them; out of memory is reported, and the ladder goes on with
  checkpointing) → `compiled`.

Every change computes the same step: 04_sft and 05_rft test each (bit for bit, or up to rounding for the compiled UNet).
Each (stage, preset) builds its models once (`load_long_sd`, LoRA on the UNet); each row runs one warm-up step, then
`--steps` timed optimizer steps (forward, backward, AdamW). Peak memory: `torch.cuda.max_memory_allocated` per row on a
GPU. On the CPU (`--fresh`, the default there) each row runs in a process of its own that applies the ladder up to it,
so its peak resident set is its own. `sd15-arch` is SD-1.5's architectures with random weights (nothing downloaded); on
a GPU `--resolution 512 --bf16` is the paper's setting. The toy world needs the toy zoo (built if missing).
Writes bench/results/train_steps.json and .md (or `--out`), row by row.

    python bench/train_steps.py [--steps 3] [--device cpu|cuda] [--resolution 32] [--bf16] [--stages sft,rft]
"""
import argparse, json, multiprocessing as mp, platform, resource, shlex, tempfile, time
from pathlib import Path

SFT = ["today", "cached", "bf16 frozen", "channels-last", "fused AdamW", "compiled"]
RFT = ["today", "bf16 frozen", "no checkpointing", "compiled"]


def one(stage, preset, batch, a, ladder, rows_to_time, q):
    import contextlib, random, torch
    from longalign.core import frozen_weights_in, package_versions
    from longalign.longsd import add_unet_lora, load_long_sd
    from longalign.toyworld import long_caption, scenes
    torch.manual_seed(0)
    dev, cuda = a.device, a.device == "cuda"
    encoders = getattr(a, "encoders", "clip-cat") if stage == "sft" else "clip-cat"   # RFT trains clip-cat (05)
    pipe, enc = load_long_sd(preset, encoders)
    if a.resolution and preset != "toy": pipe.unet.register_to_config(sample_size=a.resolution // 8)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    add_unet_lora(pipe.unet, preset)
    caps = [long_caption(s, random.Random(i)).text for i, s in enumerate(scenes(batch, seed=5))]
    desc = ""
    if stage == "sft":
        from longalign.sft import LongSD, cache_sft_features
        model = LongSD(pipe, enc, cache_embeddings=False).to(dev)
        pixels = torch.rand(batch, 3, res, res)
        kw = dict(pixels=pixels.to(dev), captions=caps)
        step = lambda: model(**kw)
    else:
        from longalign.rft import LongSDReward, PreferenceReward, dataset_direction, load_reward_model, RFTConfig
        cfg = RFTConfig.for_preset(preset, **(dict(zip(("sampler_steps", "grad_steps"), map(int, a.sampler.split(",")))) if a.sampler else {}))
        pm = load_reward_model(preset)
        reward = PreferenceReward(pm, cfg.omega, dataset_direction(pm, caps))
        model = LongSDReward(pipe, enc, reward, cfg.sampler_steps, cfg.grad_steps, cfg.guidance).to(dev)
        step = lambda: model(caps, torch.Generator().manual_seed(0))["loss"]
        desc = f"N={cfg.sampler_steps}, K={cfg.grad_steps}"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    low = contextlib.ExitStack()
    dtype = torch.bfloat16 if a.bf16 else torch.float32

    def run():
        with torch.autocast(device_type=dev, dtype=dtype, enabled=a.bf16):
            loss = step()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)

    def timed(n):
        if cuda: torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n): run()
        if cuda: torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in ladder[:ladder.index(rows_to_time[-1]) + 1]:
        undo = None
        if name == "cached":                    # the features written once, read back as the data loader would give them
            with tempfile.TemporaryDirectory() as d:
                data = cache_sft_features([{"pixels": p, "caption": c} for p, c in zip(pixels, caps)], d, pipe, enc, progress=False)
                rows = [data[i] for i in range(batch)]
                model.use_cache(data)
            kw = {k: torch.stack([r[k] for r in rows]).to(dev) for k in rows[0]}
        elif name == "bf16 frozen": low.enter_context(frozen_weights_in(torch.bfloat16, model))
        elif name == "channels-last":
            model.unet.to(memory_format=torch.channels_last); model.channels_last = True
            for k in ("latent_mean", "latent_std"):
                if k in kw: kw[k] = kw[k].contiguous(memory_format=torch.channels_last)
        elif name == "fused AdamW": opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
        elif name == "no checkpointing":
            model.checkpoint = False
            def undo(): model.checkpoint = True
        elif name == "compiled": model.unet.compile(backend="inductor")
        if name not in rows_to_time: continue
        if cuda: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        row = dict(stage=stage, encoders=encoders, preset=preset, step=name, batch=batch, resolution=res, device=dev, bf16=a.bf16, sampler=desc,
                   gpu=torch.cuda.get_device_name() if cuda else None)
        try:
            first = timed(1) if name != "compiled" else timed(2)          # warm-up (compiled: compiling, for training and no-grad calls)
            sec = timed(a.steps) / a.steps
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            if cuda: torch.cuda.empty_cache()
            row.update(oom=True); q.put(row)
            if undo: undo()
            continue
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row.update(seconds_per_step=round(sec, 3), seconds_per_image=round(sec / batch, 4), images_per_second=round(batch / sec, 2),
                   peak_mib=round(peak), compile_seconds=round(first - 2 * sec, 1) if name == "compiled" else None,
                   threads=torch.get_num_threads(), versions={k: v for k, v in package_versions().items() if k in ("torch", "diffusers", "peft")})
        q.put(row)
    low.close()
    q.put(None)


def write(rows, meta, out):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    first = {}
    lines = ["| stage | preset | step | batch | px | device | s / step | s / image | × first | peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = f"{r['stage']}{' (' + r['sampler'] + ')' if r['sampler'] else ''}{' ' + r['encoders'] if r.get('encoders', 'clip-cat') != 'clip-cat' else ''}"
        dev = f"{r['device']}{' bf16' if r['bf16'] else ''}"
        if r.get("oom"):
            lines.append(f"| {label} | {r['preset']} | {r['step']} | {r['batch']} | {r['resolution']} | {dev} | out of memory | | | |"); continue
        setting = tuple(r.get(k) for k in ("stage", "preset", "batch", "resolution", "device", "bf16", "sampler"))
        base = first.setdefault((*setting, r.get("encoders", "clip-cat")), r["seconds_per_step"])
        comp = f" (compiling: {r['compile_seconds']} s)" if r.get("compile_seconds") is not None else ""
        lines.append(f"| {label} | {r['preset']} | {r['step']}{comp} | {r['batch']} | {r['resolution']} | {dev} | {r['seconds_per_step']} | "
                     f"{r['seconds_per_image']} | {round(base / r['seconds_per_step'], 2)}× | {r['peak_mib']} |")
    how = ("each row in a process of its own that applies the ladder up to it" if meta["fresh"] else
           "the rows of a stage in one process, each adding its change to the row above")
    mem = ("`torch.cuda.max_memory_allocated` during the row" if meta.get("device") == "cuda" else
           "the process's peak resident set (includes the models)")
    how = f"{how}; peak memory: {mem}"
    lines.append(f"\n{meta['steps']} timed steps after one warm-up (two for the compiled UNet: compile time = those two steps "
                 f"minus two timed steps); {how}. `{meta['command']}`")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--resolution", type=int, default=0, help="sd15-arch image side (0: the preset's 32 px)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--presets", default="toy,sd15-arch")
    ap.add_argument("--stages", default="sft,rft")
    ap.add_argument("--skip", default="", help="ladder rows left out, comma-separated (e.g. 'compiled')")
    ap.add_argument("--only", default="", help="time only these rows (the ladder up to each is still applied); e.g. 'compiled'")
    ap.add_argument("--encoders", default="clip-cat", help="the SFT step's encoding: 'clip-cat', 'clip+t5' or 't5-mlp' (RFT: clip-cat)")
    ap.add_argument("--sampler", default="", help="RFT sampler 'N,K' (default: the preset's; the paper's is 50,5)")
    ap.add_argument("--batches", default="", help="'sft,rft' batch sizes for sd15-arch (default 2,1)")
    ap.add_argument("--fresh", default=None, choices=["yes", "no"], help="a process per row (default: yes on the CPU, no on a GPU)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_steps"))
    a = ap.parse_args()
    fresh = (a.fresh or ("yes" if a.device == "cpu" else "no")) == "yes"
    sb, rb = map(int, a.batches.split(",")) if a.batches else (2, 1)
    batches = {"toy": {"sft": 32, "rft": 8}, "sd15-arch": {"sft": sb, "rft": rb}}
    skip, only = set(filter(None, a.skip.split(","))), set(filter(None, a.only.split(",")))
    unknown = (skip | only) - set(SFT) - set(RFT)
    if unknown: ap.error(f"--skip/--only: unknown rows {sorted(unknown)}; the rows are {SFT} (SFT) and {RFT} (RFT)")
    defaults = dict(steps=3, device="cpu", resolution=0, bf16=False, presets="toy,sd15-arch", stages="sft,rft", skip="", only="", encoders="clip-cat", sampler="", batches="", fresh=None)
    meta = {"machine": platform.processor() or platform.machine(), "device": a.device, "steps": a.steps, "fresh": fresh, "command": "python bench/train_steps.py " +
            " ".join(f"--{k}" if v is True else f"--{k} {shlex.quote(str(v))}" for k, v in vars(a).items() if k != "out" and v != defaults.get(k))}
    rows, ctx = [], mp.get_context("spawn")
    for preset in a.presets.split(","):
        for stage in a.stages.split(","):
            ladder = [n for n in (SFT if stage == "sft" else RFT) if n not in skip and (a.bf16 or n != "bf16 frozen")]
            timed = [n for n in ladder if not only or n in only]
            for group in ([[n] for n in timed] if fresh else [timed] if timed else []):
                q = ctx.Queue()
                p = ctx.Process(target=one, args=(stage, preset, batches[preset][stage], a, ladder, group, q))
                p.start()
                while True:
                    try: row = q.get(timeout=10)
                    except Exception:
                        if p.is_alive(): continue
                        print(f"{stage} {preset} {group}: the process died (exit code {p.exitcode})", flush=True); break
                    if row is None: break
                    print(row, flush=True); rows.append(row)
                    write(rows, meta, Path(a.out))
                p.join()


if __name__ == "__main__":
    main()
