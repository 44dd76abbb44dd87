"""Overhead of the training harness (`longalign.core.fit`) against a bare PyTorch loop doing the same optimizer steps.

Both run in this one process, interleaved, on the same model and data, and the results are ratios, so the shared, noisy
machine affects both alike. Each loop's step function records a timestamp; a step's time is the interval between two
consecutive calls (the step itself, the optimizer, and whatever the loop does between steps: data, logging, checkpoints).
Reported apart:
- per step: the median interval after the first 10 steps (steady state), and the mean interval over the same window (with
  checkpoints every 20 steps, their writes show in the mean, not in the median);
- fixed: what `fit` costs outside its steps (building the Accelerator, config.json, metrics.csv, the final checkpoint),
  i.e. its wall time minus the span of its step calls; the bare loop's model and optimizer are built outside its timer.
Writes bench/results/harness_overhead.json.

    python bench/harness_overhead.py [--steps 200] [--repeats 3] [--threads 1]
"""
import argparse, json, shlex, statistics, sys, tempfile, time
from pathlib import Path
import torch
from torch import nn
from longalign.core import TrainConfig, fit, package_versions

WARMUP = 10

def data(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    return [{"x": xi, "y": xi.sum().reshape(1)} for xi in x]

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 1))

def timed_step(stamps):
    def step(m, batch, ctx):
        stamps.append(time.perf_counter())
        return ((m(batch["x"]) - batch["y"]) ** 2).mean()
    return step

def bare(steps, ds, bs):
    m = model(); opt = torch.optim.AdamW(m.parameters(), lr=1e-3); stamps = []; step = timed_step(stamps)
    t = time.perf_counter()
    for s in range(steps):
        idx = torch.randperm(len(ds))[:bs].tolist()
        b = torch.utils.data.default_collate([ds[i] for i in idx])
        loss = step(m, b, None); loss.backward(); opt.step(); opt.zero_grad()
    return stamps, time.perf_counter() - t

def harness(steps, ds, bs, every):
    stamps = []; m = model()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        fit(m, ds, timed_step(stamps), TrainConfig(output_dir=d, max_steps=steps, batch_size=bs, lr=1e-3, checkpoint_every=every,
                                                   progress=False, cpu=True))
        return stamps, time.perf_counter() - t

def per_step(stamps):
    gaps = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1:])]
    return statistics.median(gaps), statistics.fmean(gaps)

if __name__ == "__main__":
    ap = argparse.ArgumentParser(); ap.add_argument("--steps", type=int, default=200); ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a small MLP: more threads add only contention)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.steps <= WARMUP + 2: ap.error(f"--steps must be > {WARMUP + 2}")
    ds, bs = data(), 32
    rows = []
    for r in range(a.repeats):
        for name, run in (("bare", lambda: bare(a.steps, ds, bs)), ("harness", lambda: harness(a.steps, ds, bs, every=a.steps)),
                          ("harness_ckpt20", lambda: harness(a.steps, ds, bs, every=20))):
            stamps, wall = run()
            med, mean = per_step(stamps)
            rows.append({"repeat": r, "loop": name, "median_step_s": med, "mean_step_s": mean, "wall_s": wall,
                         "fixed_s": wall - (stamps[-1] - stamps[0]) - med})   # minus the steps (the last one ~ a median step)
    agg = lambda loop, k: statistics.median(x[k] for x in rows if x["loop"] == loop)
    res = {"steps": a.steps, "batch_size": bs, "warmup_steps": WARMUP, "runs": rows,
           "median_step_ratio_harness_over_bare": agg("harness", "median_step_s") / agg("bare", "median_step_s"),
           "mean_step_ratio_harness_over_bare": agg("harness", "mean_step_s") / agg("bare", "mean_step_s"),
           "mean_step_ratio_harness_ckpt_every_20_over_bare": agg("harness_ckpt20", "mean_step_s") / agg("bare", "mean_step_s"),
           "harness_fixed_s": agg("harness", "fixed_s"), "bare_median_step_s": agg("bare", "median_step_s"),
           "command": "python bench/harness_overhead.py" + "".join(f" {x}" for x in map(shlex.quote, sys.argv[1:])),
           "threads": torch.get_num_threads(), "versions": package_versions()}
    out = Path(__file__).parent / "results" / "harness_overhead.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k not in ("runs", "versions")}, indent=2))
