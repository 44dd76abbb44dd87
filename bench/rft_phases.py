"""Where one RFT step's time goes on a GPU: sd15-arch (random weights) at 512 px, bf16 autocast with the frozen weights
stored in bf16 (as `fit` trains), N = 50, K = 5, 8 prompts, guidance 5. Each phase is timed between CUDA synchronisations
(which themselves cost a little): the text encoding, the sampler (`drtune_sample`: 50 guided UNet calls of 16 images, 5 of
them on the gradient path), the VAE decode on the graph, the reward's image tower, the backward pass (the 5 checkpointed UNet
calls recomputed, the decode and the reward). One warm-up step, then the mean of two; then one guided UNet call of 16
images alone, without gradient and with forward + backward (mean of three after one warm-up). Prints the breakdown.

    python bench/rft_phases.py      # needs a CUDA GPU
"""
import random, time, torch
import longalign.rft as R
from longalign.core import frozen_weights_in
from longalign.longsd import add_unet_lora, load_long_sd
from longalign.toyworld import long_caption, scenes
if not torch.cuda.is_available(): raise SystemExit("bench/rft_phases.py needs a CUDA GPU")
torch.manual_seed(0)
t0 = time.time()
pipe, enc = load_long_sd("sd15-arch", "clip-cat"); pipe.unet.register_to_config(sample_size=64)
add_unet_lora(pipe.unet, "sd15-arch")
caps = [long_caption(s, random.Random(i)).text for i, s in enumerate(scenes(8, seed=5))]
pm = R.load_reward_model("sd15-arch"); reward = R.PreferenceReward(pm, 0.3, R.dataset_direction(pm, caps))
model = R.LongSDReward(pipe, enc, reward, 50, 5, 5.0).to("cuda").train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
print(f"built in {time.time() - t0:.0f} s", flush=True)
T = {}
def timed(name, fn):
    def w(*a, **k):
        torch.cuda.synchronize(); t = time.perf_counter(); out = fn(*a, **k); torch.cuda.synchronize()
        T[name] = T.get(name, 0) + time.perf_counter() - t
        return out
    return w
R.drtune_sample = timed("sampler: 50 guided UNet calls (5 on the gradient path)", R.drtune_sample)
model.vae.decode = timed("VAE decode (on the graph)", model.vae.decode)
reward.forward = timed("reward (CLIP-H image tower)", reward.forward)
model.condition = timed("text encoding", model.condition)
back = timed("backward (5 recomputed UNet calls, decode, reward)", lambda l: l.backward())
with frozen_weights_in(torch.bfloat16, model):
    for step in range(3):
        if step == 1: T.clear()
        torch.cuda.synchronize(); t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16): loss = model(caps, torch.Generator().manual_seed(0))["loss"]
        back(loss); opt.step(); opt.zero_grad(set_to_none=True); torch.cuda.synchronize()
        T["whole step"] = T.get("whole step", 0) + time.perf_counter() - t
    x = torch.randn(16, 4, 64, 64, device="cuda"); c = torch.randn(16, 77, 768, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for grad in (False, True):
            for i in range(4):
                if i == 1: torch.cuda.synchronize(); t = time.perf_counter()
                with torch.set_grad_enabled(grad):
                    out = pipe.unet(x, torch.tensor(500, device="cuda"), c).sample
                if grad: out.float().mean().backward()
            torch.cuda.synchronize(); T[f"one UNet call, 16 images, {'forward+backward' if grad else 'no grad'}"] = (time.perf_counter() - t) / 3 * 2
for k, v in T.items(): print(f"{k}: {v / 2:.3f} s", flush=True)
print("peak GiB", torch.cuda.max_memory_allocated() / 2**30)
