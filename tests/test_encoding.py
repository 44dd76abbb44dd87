"""Segment-level encoding against independent references: the official algorithm written out plainly, per-segment
encoding without batching, and T5 with and without its attention mask."""
import re
import warnings

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from longalign.core import TextAdapter
from longalign.encoding import (CONTENT, PAD_STAR, POLICIES, SOT, T5_TOKEN, LongPromptEncoder, SegmentsDroppedWarning,
                                pad_star_embedding, split_segments)
from longalign.toyworld import clip_tokenizer

CAPTIONS = [
    "A cat sits on a mat. The mat is 3.5 m long? It is red! Yes; the cat sleeps.",
    'He said "stop"! Then; "wait";" she left. The sky was grey.',
    "A dog. " + " ".join(["a very long clause about a dog"] * 20) + ". The end.",     # a sentence over 77 tokens
    "no punctuation at all",
    "",
    " ".join(f"Sentence number {i} describes object {i}." for i in range(60)),          # far over 240 tokens
]


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


@pytest.fixture(scope="module")
def te():
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=49407)
    return CLIPTextModel(cfg).eval()


def official_reference(captions, tokenizer, text_encoder, token_length=240):
    """The official caption-to-embedding algorithm, written out as plainly as possible."""
    segments = []
    for caption in captions:
        parts = [p + "." for p in re.split(r'"!|\.|\?|;"', caption) if len(p) > 0]
        segments.append(parts if parts else [caption])
    flat = [s for parts in segments for s in parts]
    ids = tokenizer(flat, max_length=77, truncation=True, padding=True, return_tensors="pt").input_ids
    hidden = text_encoder(ids)[0]
    empty = tokenizer([""], max_length=77, padding="max_length", return_tensors="pt").input_ids
    pad_embed = text_encoder(empty)[0][0, -60:].mean(0)
    out, k = [], 0
    for parts in segments:
        rows = []
        for _ in parts:
            keep = (ids[k] != tokenizer.pad_token_id) & (ids[k] != tokenizer.eos_token_id)
            rows.append(hidden[k][keep])
            k += 1
        e = torch.cat(rows)
        if len(e) >= token_length: e = e[:token_length]
        else: e = torch.cat([e, pad_embed.expand(token_length - len(e), -1)])
        out.append(e)
    return torch.stack(out)


def test_compat_matches_official_reference(tok, te):
    enc = LongPromptEncoder(tok, te, mode="compat", max_batch_tokens=77 * 3)   # small buckets: batching differs from the reference
    with torch.no_grad():
        ours, ref = enc.encode(CAPTIONS).prompt_embeds, official_reference(CAPTIONS, tok, te)
    torch.testing.assert_close(ours, ref)
    assert enc.stats["calls"] > 1


def test_compat_truncates_like_official(tok, te):
    with torch.no_grad():
        out = LongPromptEncoder(tok, te, mode="compat").encode(CAPTIONS)
    # the over-long sentence is cut at 77 tokens (75 content tokens after its <sot>); the long prompt is cut mid-segment
    spans = out.spans[2]
    assert spans[1][1] - spans[1][0] == 76
    assert out.dropped[5] and out.spans[5][-1][1] == 240
    assert out.token_types[5].tolist().count(PAD_STAR) == 0


def test_default_policy_equals_standard_for_one_sentence(tok, te):
    text = "A small red circle in the top left."
    with torch.no_grad():
        out = LongPromptEncoder(tok, te).encode(text)
        ids = tok([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
        std = te(ids)[0][0]
    n = int((ids[0] != tok.pad_token_id).sum())
    torch.testing.assert_close(out.prompt_embeds[0, :n], std[:n])
    assert out.token_types[0, :n].tolist() == [SOT] + [CONTENT] * (n - 1)


def test_bucketing_does_not_change_embeddings(tok, te):
    """Any packing of segments into text-encoder calls gives the same embeddings as encoding each segment alone."""
    with torch.no_grad():
        packed = LongPromptEncoder(tok, te, max_batch_tokens=77 * 64).encode(CAPTIONS)
        alone = LongPromptEncoder(tok, te, max_batch_tokens=1).encode(CAPTIONS)
    torch.testing.assert_close(packed.prompt_embeds, alone.prompt_embeds)
    for name in POLICIES:
        with torch.no_grad():
            a = LongPromptEncoder(tok, te, policy=name, max_batch_tokens=77 * 64).encode(CAPTIONS[:3]).prompt_embeds
            b = LongPromptEncoder(tok, te, policy=name, max_batch_tokens=1).encode(CAPTIONS[:3]).prompt_embeds
        torch.testing.assert_close(a, b)


def test_robust_keeps_whole_segments_and_reports_dropped(tok, te):
    enc = LongPromptEncoder(tok, te, overflow="warn")
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = enc.encode(CAPTIONS)
        enc.encode(CAPTIONS)
    msgs = [str(w.message) for w in caught if issubclass(w.category, SegmentsDroppedWarning)]
    assert len(msgs) == 2                                   # every call, not once per encoder
    kept, dropped = out.segments[5], out.dropped[5]
    assert kept + dropped == split_segments(CAPTIONS[5], tokenizer=tok)
    assert out.spans[5][-1][1] <= 240 and len(out.spans[5]) == len(kept)
    # the next segment would not have fitted
    assert out.spans[5][-1][1] + len(tok(dropped[0]).input_ids) - 1 > 240
    n_tok = sum(len(tok(s).input_ids) - 2 for s in dropped)
    assert out.dropped_tokens == [0, 0, 0, 0, 0, n_tok]
    assert f"prompt[5] lost {len(dropped)} of 60 sentences and {n_tok} content tokens" in msgs[0]
    # the over-long sentence was split, not cut: every word is encoded
    words = " ".join(out.segments[2]).split()
    assert words == CAPTIONS[2].split()


FIVE = {"short": "A red circle. It is small. A blue square. It is large. The sky is grey.",       # 20 content tokens
        "long": " ".join(f"In the {w} corner of the picture there is a {c} {s} that is {z} and slightly tilted."
                         for w, c, s, z in (("top left", "red", "circle", "small"), ("top right", "blue", "square", "large"),
                                            ("bottom left", "green", "triangle", "tiny"), ("bottom right", "grey", "star", "huge"),
                                            ("middle", "pink", "heart", "medium")))}   # ≈ 100 content tokens


def content_ids(tok, sentences):
    return [t for s in sentences for t in tok(s, add_special_tokens=False).input_ids]


@pytest.mark.parametrize("overflow", ["pack", "warn", "raise"])
def test_every_policy_keeps_or_reports_every_sentence(tok, te, overflow):
    """Five sentences, every policy, 77 and 240 positions: either every content token is encoded, in order, or the call
    warns (or raises) with the number of sentences and content tokens left out, and `.dropped` holds exactly those."""
    fits = {}
    for (kind, text), name, length in ((k, n, t) for k in FIVE.items() for n in POLICIES for t in (77, 240)):
        sents = split_segments(text, tokenizer=tok)
        assert len(sents) == 5
        enc = LongPromptEncoder(tok, te, target_length=length, policy=name, overflow=overflow)
        whole = content_ids(tok, sents)
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try: out = enc.encode(text)
            except ValueError as err: out, raised = None, str(err)
            else: raised = None
        msgs = [str(w.message) for w in caught if issubclass(w.category, SegmentsDroppedWarning)]
        if out is not None and not out.dropped[0]:          # everything encoded: no report, no loss
            assert not msgs and out.dropped_tokens == [0]
            encoded = out.token_ids[0][out.token_types[0] == CONTENT].tolist()
            assert encoded == whole, (kind, name, length)
            fits[(kind, name, length)] = True
            continue
        fits[(kind, name, length)] = False
        report = raised if overflow == "raise" else msgs[0]
        assert overflow != "raise" or (raised and not msgs)
        assert overflow == "raise" or len(msgs) == 1
        if out is not None:
            lost = content_ids(tok, out.dropped[0])
            encoded = out.token_ids[0][out.token_types[0] == CONTENT].tolist()
            assert encoded + lost == whole and out.dropped_tokens == [len(lost)]
            n_lost = sum(len(split_segments(s)) for s in out.dropped[0])
            assert f"prompt[0] lost {n_lost} of 5 sentences and {len(lost)} content tokens" in report
        assert f"target_length={length}" in report and f"policy={name!r}" in report
    # what each overflow mode changes: packing keeps every short prompt whole, and the long one wherever one 77-token
    # segment's worth of positions is not the limit
    short_fit = {(n, t): fits[("short", n, t)] for n in POLICIES for t in (77, 240)}
    if overflow == "pack": assert all(short_fit.values())
    else: assert [k for k, v in short_fit.items() if not v] == [("keep-all", 77), ("keep-all", 240)]
    assert fits[("long", "paper", 240)] and not fits[("long", "paper", 77)]


def test_packing_loses_least(tok, te):
    """On 60 sentences, packing never encodes fewer content tokens than the policy's own layout, and what it leaves out
    could not have fitted: the first sentence left out does not fit in the room left, even as a segment of its own."""
    text = CAPTIONS[5]
    for name in POLICIES:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", SegmentsDroppedWarning)
            packed = LongPromptEncoder(tok, te, policy=name).encode(text)
            plain = LongPromptEncoder(tok, te, policy=name, overflow="warn").encode(text)
        assert 0 < packed.dropped_tokens[0] <= plain.dropped_tokens[0], name
        n_segs = lambda o: len(o.segments[0]) + len(o.dropped[0])
        if name != "multi": assert n_segs(packed) < n_segs(plain) == 60, name             # grouped
        first_out = split_segments(packed.dropped[0][0])[0]
        alone = LongPromptEncoder(tok, te, policy=name, overflow="warn", target_length=10_000)
        with torch.no_grad(): cost = alone.encode(first_out).spans[0][-1][1]            # its positions as a segment
        assert packed.spans[0][-1][1] + cost > 240, name


def test_keep_all_packed_at_77_is_the_standard_encoding(tok, te):
    """keep-all at 77 positions packs a short prompt's sentences into one segment: diffusers' own 77-token encoding."""
    text = FIVE["short"]
    ids = tok([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")                  # nothing is dropped, so nothing is reported
        out = LongPromptEncoder(tok, te, target_length=77, policy="keep-all").encode(text)
        torch.testing.assert_close(out.prompt_embeds[0], te(ids)[0][0], rtol=0, atol=0)
    assert out.segments == [[text]] and out.token_ids[0].tolist() == ids[0].tolist()


def test_pad_star_with_a_distinct_pad_id(tok, te):
    """SD-2 style tokenizers pad with id 0 ('!'), not with <eot>; 'mean-pad' averages the positions after <eot>."""
    tok2 = clip_tokenizer()
    tok2.pad_token = "!"
    assert tok2.pad_token_id == 0 != tok2.eos_token_id
    ids = tok2([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, :3].tolist() == [49406, 49407, 0]
    with torch.no_grad():
        h = te(ids)[0][0]
        torch.testing.assert_close(pad_star_embedding(tok2, te, "mean-pad"), h[2:].mean(0))
        torch.testing.assert_close(pad_star_embedding(tok2, te, "official"), h[-60:].mean(0))
        out = LongPromptEncoder(tok2, te, pad_star="mean-pad").encode("A red circle. It is small.")
    assert (out.token_types[0] == PAD_STAR).sum() == 240 - (len(tok("A red circle.").input_ids) - 1) - (len(tok("It is small.").input_ids) - 1)


def test_gradients_reach_a_trainable_text_encoder(tok):
    torch.manual_seed(1)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407)
    model = CLIPTextModel(cfg)
    out = LongPromptEncoder(tok, model).encode(["A red circle. It is small.", ""])
    out.prompt_embeds.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.fixture(scope="module")
def t5_parts():
    from transformers import PreTrainedTokenizerFast
    from longalign.toyworld import train_t5_tokenizer
    t5_tok = train_t5_tokenizer(CAPTIONS * 5, vocab_size=300)
    torch.manual_seed(2)
    t5 = T5EncoderModel(T5Config(vocab_size=t5_tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)).eval()
    return t5_tok, t5, TextAdapter(32, 32, 64).eval()


def test_t5_branch_compat_and_robust(tok, te, t5_parts):
    t5_tok, t5, adapter = t5_parts
    texts = ["A red circle. It is small.", ""]
    with torch.no_grad():
        compat = LongPromptEncoder(tok, te, mode="compat", encoders="clip+t5", t5=t5, t5_tokenizer=t5_tok,
                                   t5_adapter=adapter, t5_length=40).encode(texts)
        e = t5_tok(texts, max_length=40, padding="max_length", truncation=True, return_tensors="pt")
        ref = adapter(t5(input_ids=e.input_ids).last_hidden_state)                     # official: no mask
        torch.testing.assert_close(compat.prompt_embeds[:, 240:], ref)
        torch.testing.assert_close(compat.negative_prompt_embeds[:, 240:], ref[1:].expand(2, -1, -1))  # '' through the same path
        assert compat.prompt_embeds.shape == (2, 280, 64) and (compat.token_types[:, 240:] == T5_TOKEN).all()
        # robust: T5 sees its mask, so a caption's content states do not depend on the padding length
        r40 = LongPromptEncoder(tok, te, encoders="t5-mlp", t5=t5, t5_tokenizer=t5_tok, t5_adapter=adapter, t5_length=40).encode(texts)
        r80 = LongPromptEncoder(tok, te, encoders="t5-mlp", t5=t5, t5_tokenizer=t5_tok, t5_adapter=adapter, t5_length=80).encode(texts)
    n = int(e.attention_mask[0].sum())
    torch.testing.assert_close(r40.prompt_embeds[0, :n], r80.prompt_embeds[0, :n])
    assert not torch.allclose(compat.prompt_embeds[0, 240:240 + n], r40.prompt_embeds[0, :n])
    assert r40.prompt_embeds.shape == (2, 40, 64) and r40.attention_mask[0].sum() == n


def test_encoder_arguments_are_checked(tok, te):
    with pytest.raises(ValueError, match="encoders='clip\\+t5' needs t5"):
        LongPromptEncoder(tok, te, encoders="clip+t5")
    with pytest.raises(ValueError, match="policy='best'"):
        LongPromptEncoder(tok, te, policy="best")
    with pytest.raises(ValueError, match="target_length=50"):
        LongPromptEncoder(tok, te, target_length=50)
    with pytest.raises(ValueError, match="num_images_per_prompt=0"):
        LongPromptEncoder(tok, te).encode_prompt("a", num_images_per_prompt=0)
    pe, ne = LongPromptEncoder(tok, te).encode_prompt(["a.", "b."], negative_prompt="ugly.", num_images_per_prompt=2)
    assert pe.shape == ne.shape == (4, 240, 64)
    torch.testing.assert_close(ne[0], ne[3])
    assert LongPromptEncoder(tok, te).encode_prompt("a.", do_classifier_free_guidance=False)[1] is None


def tiny_sd_parts(tok):
    "A tiny SD-1.5-shaped stack with random weights, built from configs (so, like `from_pretrained` models, not frozen)."
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), norm_num_groups=8,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    return {"text_encoder": te, "tokenizer": tok, "unet": unet, "vae": vae, "scheduler": DDIMScheduler()}


def test_from_pipe_encodes_without_autograd_and_computes_pad_star_once(tok):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(**tiny_sd_parts(tok), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    te = pipe.text_encoder
    assert te.training and all(p.requires_grad for p in te.parameters())        # not frozen, as built
    empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    calls = []
    hook = te.register_forward_hook(lambda m, args, out: calls.append(args[0].clone()))
    enc = LongPromptEncoder.from_pipe(pipe)
    try:
        outs = [enc.encode(["A red circle. It is small.", "A blue square."], negative_prompt="blurry.") for _ in range(3)]
        pad_calls = [x for x in calls if x.shape == empty.shape and torch.equal(x, empty)]
        assert len(pad_calls) == 1                                     # <pad*> once across three encodes
        assert len(calls) == 1 + 3 * enc.stats["calls"]
        for o in outs:
            assert not o.prompt_embeds.requires_grad and not o.negative_prompt_embeds.requires_grad
            assert o.prompt_embeds.grad_fn is None
        torch.testing.assert_close(outs[0].prompt_embeds, outs[2].prompt_embeds)
        with torch.no_grad(): pad_star = te(empty)[0][0, -60:].mean(0)
        torch.testing.assert_close(outs[2].prompt_embeds[0, -1], pad_star)
        # new weights (loaded in place) are a new <pad*>
        bias = next(p for n, p in te.named_parameters() if n.endswith("final_layer_norm.bias"))   # the output's shift
        with torch.no_grad(): bias.add_(1.0)
        o = enc.encode("A red circle.")
        assert len([x for x in calls if x.shape == empty.shape and torch.equal(x, empty)]) == 3   # recomputed (+ the hook's own call)
        torch.testing.assert_close(o.prompt_embeds[0, -1], pad_star + 1.0)
    finally: hook.remove()
    # the same tower, asked for gradients: a graph through CLIP and <pad*>, recomputed each call
    train = LongPromptEncoder.from_pipe(pipe, text_grad=True).encode("A red circle.")
    assert train.prompt_embeds.requires_grad
    assert LongPromptEncoder(tok, te).encode("A red circle.").prompt_embeds.requires_grad   # trainable tower: automatic
    assert not LongPromptEncoder(tok, te.eval()).encode("A red circle.").prompt_embeds.requires_grad  # eval: inference


def test_t5_adapter_stays_differentiable_when_the_towers_are_not(tok, te, t5_parts):
    """SFT trains the T5 adapter: `encode` keeps its graph, and no gradient reaches the frozen T5 or CLIP."""
    t5_tok, t5, adapter = t5_parts
    adapter.zero_grad()
    enc = LongPromptEncoder(tok, te, encoders="clip+t5", t5=t5, t5_tokenizer=t5_tok, t5_adapter=adapter, t5_length=40,
                            text_grad=False)
    out = enc.encode(["A red circle. It is small.", "A blue square."])
    assert out.prompt_embeds.requires_grad
    out.prompt_embeds[:, 240:].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters() if p.dim() > 1)
    assert all(p.grad is None for p in list(t5.parameters()) + list(te.parameters()))
    adapter.requires_grad_(False)
    try: assert not enc.encode("A red circle.").prompt_embeds.requires_grad
    finally: adapter.requires_grad_(True); adapter.zero_grad()


def test_sd15_code_path_with_local_weights(tmp_path, tok):
    """The notebook's `preset='sd15'` path (load_pipeline + encoder_from_preset) on tiny random weights given as local paths."""
    from longalign.encoding import encoder_from_preset, load_pipeline
    paths = {}
    for role, obj in tiny_sd_parts(tok).items():
        paths[role] = str(tmp_path / role)
        obj.save_pretrained(paths[role]) if hasattr(obj, "save_pretrained") else obj.save_config(paths[role])
    pipe = load_pipeline("sd15", overrides=paths)
    enc = encoder_from_preset("sd15", overrides=paths)
    assert enc.mode == "compat" and enc.target_length == 240 and type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    kw = enc.encode(["A red bicycle. A cat sleeps in its basket? " * 3] * 2).to_pipeline_kwargs()
    assert not kw["prompt_embeds"].requires_grad            # from_pretrained models are in eval mode: inference
    with torch.no_grad():
        img = pipe(**kw, num_inference_steps=2, height=16, width=16, output_type="pt").images
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()


def test_compat_refuses_policies_other_than_the_papers(tok, te):
    "compat joins segments as the official code does (the paper's policy); any other policy would be recorded but not used."
    from longalign.encoding import TokenPolicy
    for name in POLICIES:
        if name == "paper": continue
        with pytest.raises(ValueError, match=f"policy={name!r}.*mode='robust'"):
            LongPromptEncoder(tok, te, mode="compat", policy=name)
    with pytest.raises(ValueError, match="mode='robust'"):
        LongPromptEncoder(tok, te, mode="compat", policy=TokenPolicy(sot="first", eot="keep"))
    for policy in ("paper", TokenPolicy()):                                      # the paper's, by name or by value
        assert LongPromptEncoder(tok, te, mode="compat", policy=policy).config()["policy"] == \
            {"sot": "keep", "eot": "remove", "pad": "remove", "grouping": "sentence"}


@pytest.mark.parametrize("mode", ["robust", "compat"])
def test_t5_tokens_cut_at_t5_length_are_reported_and_warned(tok, te, t5_parts, mode):
    t5_tok, t5, adapter = t5_parts
    long, short = " ".join(["A red circle sits on a mat. It is small and round."] * 6), "A red circle."
    n_long = len(t5_tok(long).input_ids)
    assert n_long > 40 and len(t5_tok(short).input_ids) <= 40
    for encoders in ("t5-mlp", "clip+t5"):
        enc = LongPromptEncoder(tok, te, mode=mode, encoders=encoders, t5=t5, t5_tokenizer=t5_tok, t5_adapter=adapter, t5_length=40)
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = enc.encode([long, short])
        assert out.t5_dropped_tokens == [n_long - 40, 0]
        assert out.dropped_tokens == [0, 0]                                     # the CLIP segments fit: only T5 lost text
        msgs = [str(w.message) for w in caught if issubclass(w.category, SegmentsDroppedWarning)]
        assert len(msgs) == 1 and f"prompt[0] lost {n_long - 40} of {n_long} T5 tokens" in msgs[0], msgs
    with torch.no_grad():
        assert LongPromptEncoder(tok, te, mode=mode).encode(long).t5_dropped_tokens == [0]   # no T5 branch: nothing cut
