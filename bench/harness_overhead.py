"""Overhead of the training harness (`longalign.core.fit`) against a bare PyTorch loop doing the same optimizer steps.

Both run in this one process, interleaved, on the same model and data, and the result is a ratio, so the shared,
noisy machine affects both alike. Writes bench/results/harness_overhead.json.

    python bench/harness_overhead.py [--steps 200] [--repeats 3]
"""
import argparse, json, tempfile, time
from pathlib import Path
import torch
from torch import nn
from longalign.core import TrainConfig, fit, package_versions

def data(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    return [{"x": xi, "y": xi.sum().reshape(1)} for xi in x]

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 1))

def step(m, batch, ctx): return ((m(batch["x"]) - batch["y"]) ** 2).mean()

def bare(steps, ds, bs):
    m = model(); opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    t = time.perf_counter()
    for s in range(steps):
        idx = torch.randperm(len(ds))[:bs].tolist()
        b = torch.utils.data.default_collate([ds[i] for i in idx])
        loss = step(m, b, None); loss.backward(); opt.step(); opt.zero_grad()
    return time.perf_counter() - t

def harness(steps, ds, bs, every):
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        fit(model(), ds, step, TrainConfig(output_dir=d, max_steps=steps, batch_size=bs, lr=1e-3, checkpoint_every=every,
                                           progress=False, cpu=True))
        return time.perf_counter() - t

if __name__ == "__main__":
    ap = argparse.ArgumentParser(); ap.add_argument("--steps", type=int, default=200); ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ds, bs = data(), 32
    rows = []
    for r in range(a.repeats):
        b = bare(a.steps, ds, bs); h = harness(a.steps, ds, bs, every=a.steps); hc = harness(a.steps, ds, bs, every=20)
        rows.append({"bare_s": b, "harness_s": h, "harness_ckpt20_s": hc})
    med = lambda k: sorted(r[k] for r in rows)[len(rows) // 2]
    res = {"steps": a.steps, "batch_size": bs, "repeats": rows,
           "ratio_harness_over_bare": med("harness_s") / med("bare_s"),
           "ratio_harness_ckpt_every_20_over_bare": med("harness_ckpt20_s") / med("bare_s"),
           "versions": package_versions()}
    out = Path(__file__).parent / "results" / "harness_overhead.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k.startswith("ratio")}, indent=2))
