"""Denscore scoring throughput (images/s) with the text embeddings cached vs recomputed, on a ViT-B/32-sized CLIPModel
with random weights on the CPU.

RFT scores every generated image against its long caption; the captions repeat across steps and the reward's text tower is
frozen, so `PreferenceModel` caches each segment's embedding. Both variants run in this one process, interleaved, and the
result is a ratio. Writes bench/results/preference.json and bench/results/preference.md.

    python bench/preference.py [--images 32] [--rounds 3]
"""
import argparse, json, random, statistics, time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from longalign.core import package_versions
from longalign.preference import PreferenceModel
from longalign.toyworld import clip_tokenizer, long_caption, scenes


def model():
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
                     vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                        image_size=224, patch_size=32), projection_dim=512)
    return CLIPModel(cfg).eval().requires_grad_(False)


def main(n_images=32, rounds=3, out=Path(__file__).parent / "results"):
    torch.set_num_threads(2)
    pm = PreferenceModel(model(), clip_tokenizer()).eval()
    caps = [long_caption(s, random.Random(i)).text for i, s in enumerate(scenes(n_images, seed=3))]
    n_seg = sum(len(pm.segments(c)) for c in caps)
    images = torch.rand(n_images, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    times = {"cached": [], "uncached": []}
    with torch.no_grad():
        pm.denscore(images[:2], caps[:2])                  # warm-up
        for r in range(rounds):
            for variant in (("cached", "uncached") if r % 2 == 0 else ("uncached", "cached")):
                if variant == "uncached": pm._cache.clear()
                else: pm.denscore(images[:1], caps[:1]); pm.caption_embeds(caps)   # fill the cache
                t = time.perf_counter(); pm.denscore(images, caps); times[variant].append(time.perf_counter() - t)
    res = {k: n_images / statistics.median(v) for k, v in times.items()}
    row = {"images/s cached": res["cached"], "images/s uncached": res["uncached"], "speed-up": res["cached"] / res["uncached"],
           "images": n_images, "segments": n_seg, "rounds": rounds, "threads": torch.get_num_threads(), "versions": package_versions()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "preference.json").write_text(json.dumps(row, indent=1))
    md = (f"| text embeddings | images/s |\n|---|---|\n| recomputed | {res['uncached']:.2f} |\n| cached | {res['cached']:.2f} |\n\n"
          f"Denscore of {n_images} images against their long toy captions ({n_seg} segments), ViT-B/32-sized CLIP with random "
          f"weights, {row['threads']} CPU threads, median of {rounds} interleaved rounds: caching is {row['speed-up']:.2f}x faster. "
          f"`python bench/preference.py`\n")
    (out / "preference.md").write_text(md)
    print(md)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    main(a.images, a.rounds)
