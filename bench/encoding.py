"""Throughput, padding efficiency and peak memory of long-prompt encoders on a CLIP-L-sized text tower (random weights, CPU).

Compared, on the same prompts of about 60, 120, 240 and 500 CLIP tokens:
- `LongPromptEncoder` (all segments of all prompts sorted by length and packed into buckets), called as the README does,
  without `torch.no_grad()`, on a text tower whose weights require grad (as built from a config or `from_pretrained`):
  `from_pipe` encoders run it without autograd;
- `… recording a graph` (`text_grad=True`): the same call recording autograd through CLIP, as `encode` did on such
  weights before issue 23;
- `per-prompt loop`: the first encoder called once per prompt (no batching across prompts), under `torch.no_grad()`;
- `compel` (`truncate_long_prompts=False`: 77-token windows, each with its own <sot>/<eot>/<pad>, one prompt at a time),
  under `torch.no_grad()`.

Throughput is measured in this one process with the methods interleaved over several rounds, and reported as ratios to
compel, so machine noise hits all alike. Padding efficiency = the prompts' content tokens / token positions the text encoder
processed. Peak memory = the highest resident-set size above the loaded model's, sampled every 2 ms, each method in a fresh
process. Writes bench/results/encoding.json and bench/results/encoding.md.

    pip install -e ".[bench]"   # compel is a benchmark-only dependency
    python bench/encoding.py [--prompts 16] [--rounds 3]
"""
import argparse, gc, json, multiprocessing as mp, os, random, shlex, statistics, sys, threading, time
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from longalign.core import package_versions
from longalign.encoding import LongPromptEncoder
from longalign.toyworld import clip_tokenizer

LENGTHS = (60, 120, 240, 500)
SUBJECTS = ["an old lighthouse", "a red bicycle", "a wooden table", "a small brown dog", "a glass vase", "a stone bridge",
            "a woman in a yellow raincoat", "a paper lantern", "a tall pine tree", "a blue fishing boat"]
CLAUSES = ["stands near the centre of the picture", "is lit by warm afternoon light coming from the left",
           "casts a long soft shadow across the ground", "has a few scratches and faded paint along its edges",
           "is partly hidden behind a low hedge", "sits on a patch of wet grass covered with fallen leaves",
           "reflects the cloudy sky above it", "looks slightly tilted, as if it had been moved in a hurry",
           "is surrounded by scattered pebbles and a couple of empty bottles", "appears sharp while the background is blurred"]


def make_prompt(n_tokens, tokenizer, rng):
    "Descriptive sentences (≈ 10-30 tokens each, like LLaVA-style captions) until the prompt has about `n_tokens` tokens."
    sents = []
    while True:
        s = f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(CLAUSES)}"
        if rng.random() < 0.5: s += f", and {rng.choice(SUBJECTS)} {rng.choice(CLAUSES)}"
        cand = " ".join(sents + [s + "."])
        if len(tokenizer(cand, verbose=False).input_ids) - 2 > n_tokens and sents: return " ".join(sents)
        sents.append(s + ".")


def text_encoder():
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, eos_token_id=49407)   # CLIP ViT-L/14's text tower
    return CLIPTextModel(cfg).eval()


def methods(tok, te, target_length):
    "Each method encodes a list of prompts and returns the token positions the text tower processed."
    ours = LongPromptEncoder(tok, te, target_length=target_length, text_grad=False)    # what from_pipe builds
    graph = LongPromptEncoder(tok, te, target_length=target_length, text_grad=True)
    def batched(prompts):
        ours.encode(prompts)
        return ours.stats["positions"]
    def recording(prompts):
        out = graph.encode(prompts)
        assert out.prompt_embeds.requires_grad
        return graph.stats["positions"]
    @torch.no_grad()
    def loop(prompts):
        pos = 0
        for p in prompts:
            ours.encode(p); pos += ours.stats["positions"]
        return pos
    from compel import Compel
    comp = Compel(tokenizer=tok, text_encoder=te, truncate_long_prompts=False)
    @torch.no_grad()
    def compel(prompts):   # compel encodes one prompt at a time, in windows of 77 positions (padding to a common length is free)
        return sum(comp(p).shape[1] for p in prompts)
    return {"LongPromptEncoder": batched, "… recording a graph": recording, "per-prompt loop": loop, "compel": compel}


def _target(n):  # room for every segment's <sot>: no method may drop content
    return max(240, int(n * 1.4) // 10 * 10)


def _rss():
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * 4096


def _peak_worker(method, n, n_prompts, q):
    torch.set_num_threads(2)
    tok, te = clip_tokenizer(), text_encoder()
    prompts = [make_prompt(n, tok, random.Random(i)) for i in range(n_prompts)]
    fn = methods(tok, te, _target(n))[method]
    fn(prompts[:2])                        # warm-up: <pad*>, lazy imports
    gc.collect()
    base, peak, done = _rss(), [0], threading.Event()
    def sample():
        while not done.is_set(): peak[0] = max(peak[0], _rss()); time.sleep(0.002)
    t = threading.Thread(target=sample); t.start()
    fn(prompts)                            # a recorded graph lives until the call returns
    done.set(); t.join()
    q.put((peak[0] - base) / 2**20)


def main(n_prompts=16, rounds=3, out=Path(__file__).parent / "results", lengths=LENGTHS):
    torch.set_num_threads(2)
    tok, te = clip_tokenizer(), text_encoder()
    rows = []
    for n in lengths:
        prompts = [make_prompt(n, tok, random.Random(i)) for i in range(n_prompts)]
        content = sum(len(tok(p, verbose=False).input_ids) - 2 for p in prompts)
        sent = [len(tok(s, verbose=False).input_ids) - 2 for p in prompts for s in p.split(". ")]
        fns = methods(tok, te, _target(n))
        times = {m: [] for m in fns}
        positions = {}
        for f in fns.values(): f(prompts[:2])            # warm-up
        for r in range(rounds):
            for m, f in (fns.items() if r % 2 == 0 else reversed(list(fns.items()))):
                t = time.perf_counter(); positions[m] = f(prompts); times[m].append(time.perf_counter() - t)
        ctx = mp.get_context("spawn")
        for m in fns:
            q = ctx.Queue(); p = ctx.Process(target=_peak_worker, args=(m, n, n_prompts, q)); p.start(); peak = q.get(); p.join()
            rows.append({"tokens": n, "method": m, "prompts/s": n_prompts / statistics.median(times[m]),
                         "padding efficiency": content / positions[m], "positions": positions[m], "content tokens": content,
                         "peak MiB above model": peak, "mean sentence tokens": statistics.mean(sent)})
        ref = next(r for r in rows if r["tokens"] == n and r["method"] == "compel")["prompts/s"]
        for r in rows:
            if r["tokens"] == n: r["throughput vs compel"] = r["prompts/s"] / ref
        print(*(f"{r['tokens']:4d} {r['method']:18s} {r['prompts/s']:7.2f}/s  x{r['throughput vs compel']:.2f}  "
                f"eff {r['padding efficiency']:.2f}  peak {r['peak MiB above model']:.0f} MiB" for r in rows if r["tokens"] == n),
              sep="\n", flush=True)
        out.mkdir(parents=True, exist_ok=True)       # written after every length: a long run that is stopped keeps its rows
        meta = {"prompts": n_prompts, "rounds": rounds, "threads": torch.get_num_threads(), "versions": package_versions(),
                "load average": os.getloadavg()[0], "lengths done": [x for x in lengths if x <= n], "lengths asked": list(lengths),
                "command": " ".join(["python bench/encoding.py", *map(shlex.quote, sys.argv[1:])])}
        (out / "encoding.json").write_text(json.dumps({"rows": rows, **meta}, indent=1))
        md = markdown(rows, meta)
        (out / "encoding.md").write_text(md)
    print(md)


def markdown(rows, meta):
    "The results table for the docs."
    md = ["| prompt tokens | method | prompts/s | × compel | padding efficiency | peak MiB above model |", "|---|---|---|---|---|---|"]
    md += [f"| {r['tokens']} | {r['method']} | {r['prompts/s']:.2f} | {r['throughput vs compel']:.2f} | "
           f"{r['padding efficiency']:.3f} | {r['peak MiB above model']:.0f} |" for r in rows]
    md.append(f"\n{meta['prompts']} prompts per length, median of {meta['rounds']} interleaved rounds, {meta['threads']} CPU threads, "
              f"CLIP-L-sized text tower with random weights; sentences of "
              f"{statistics.mean(r['mean sentence tokens'] for r in rows):.0f} tokens on average. The two LongPromptEncoder rows "
              f"are called in grad mode on weights that require grad: the first (what `from_pipe` builds) runs without "
              f"autograd, the second records a graph (`text_grad=True`, what `encode` did before issue 23); the loop and "
              f"compel run under `torch.no_grad()`. 1-minute load average {meta['load average']:.1f} on the machine at the end "
              f"(a shared machine: compare the ratios within a length). `{meta['command']}`"
              + ("" if meta["lengths done"] == meta["lengths asked"] else
                 f" (stopped after {meta['lengths done'][-1]} tokens of {meta['lengths asked']})"))
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="prompt lengths in CLIP tokens")
    a = ap.parse_args()
    main(a.prompts, a.rounds, lengths=a.lengths)
