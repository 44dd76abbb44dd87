"""A small training job run through `longalign.core.fit`, used by tests/test_harness.py as a separate process
(so it can be SIGKILLed, or launched by torchrun on 2 processes)."""
import argparse, os, signal, time
import torch
from torch import nn
from longalign.core import TrainConfig, checkpoint_hooks, fit, run_record

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=30)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--grad-accum", type=int, default=2)
p.add_argument("--checkpoint-every", type=int, default=5)
p.add_argument("--noise", action="store_true", help="the step draws random noise (tests RNG restore)")
p.add_argument("--sleep", type=float, default=0.0, help="seconds per step, so a kill lands mid-run")
p.add_argument("--kill-before-rename", type=int, default=None, help="SIGKILL this process while committing this checkpoint")
p.add_argument("--bf16", action="store_true", help="mixed_precision='bf16' with a frozen first layer, which fit stores in bf16 during the steps")
a = p.parse_args()

g = torch.Generator().manual_seed(0)
w_true = torch.randn(6, 3, generator=g)
xs = torch.randn(96, 6, generator=g)
data = [{"x": x, "y": torch.tanh(x @ w_true)} for x in xs]

torch.manual_seed(1)
model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
if a.bf16:
    frozen = nn.Linear(6, 6).requires_grad_(False)
    frozen_init = frozen.weight.detach().clone()
    model = nn.Sequential(frozen, *model)

def step(model, batch, ctx):
    x = batch["x"].to(ctx.device)
    if a.noise: x = x + 0.1 * torch.randn_like(x)
    if a.sleep: time.sleep(a.sleep)
    if a.bf16 and frozen.weight.dtype != torch.bfloat16: raise AssertionError(f"frozen weight is {frozen.weight.dtype} during a step")
    return ((model(x) - batch["y"].to(ctx.device)) ** 2).mean()

if a.kill_before_rename is not None:
    def hook(tmp, step):
        if step == a.kill_before_rename: os.kill(os.getpid(), signal.SIGKILL)
    checkpoint_hooks["before_rename"] = hook

cfg = TrainConfig(output_dir=a.out, max_steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=3e-2,
                  warmup_steps=4, max_grad_norm=1.0, checkpoint_every=a.checkpoint_every, cpu=True, progress=False,
                  mixed_precision="bf16" if a.bf16 else "no")
fit(model, data, step, cfg, record=run_record("toy", stage="harness-test", noise=a.noise))
if a.bf16:   # fit gave the frozen layer its fp32 weights back, bit for bit, on every process
    assert frozen.weight.dtype == torch.float32 and torch.equal(frozen.weight, frozen_init), "frozen weight not restored"
