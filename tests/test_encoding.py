"""Segment-level encoding against independent references: the official algorithm written out plainly, per-segment
encoding without batching, and T5 with and without its attention mask."""
import re
import warnings

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from longalign.core import TextAdapter
from longalign.encoding import (CONTENT, PAD_STAR, POLICIES, SOT, T5_TOKEN, LongPromptEncoder, pad_star_embedding,
                                split_segments)
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
    enc = LongPromptEncoder(tok, te)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = enc.encode(CAPTIONS)
        enc.encode(CAPTIONS)
    assert sum("exceed target_length" in str(w.message) for w in caught) == 1
    kept, dropped = out.segments[5], out.dropped[5]
    assert kept + dropped == split_segments(CAPTIONS[5], tokenizer=tok)
    assert out.spans[5][-1][1] <= 240 and len(out.spans[5]) == len(kept)
    # the next segment would not have fitted
    assert out.spans[5][-1][1] + len(tok(dropped[0]).input_ids) - 1 > 240
    # the over-long sentence was split, not cut: every word is encoded
    words = " ".join(out.segments[2]).split()
    assert words == CAPTIONS[2].split()


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


def test_sd15_code_path_with_local_weights(tmp_path, tok):
    """The notebook's `preset='sd15'` path (load_pipeline + encoder_from_preset) on tiny random weights given as local paths."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from longalign.encoding import encoder_from_preset, load_pipeline
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), norm_num_groups=8,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    paths = {}
    for role, obj in (("text_encoder", te), ("tokenizer", tok), ("unet", unet), ("vae", vae), ("scheduler", DDIMScheduler())):
        paths[role] = str(tmp_path / role)
        obj.save_pretrained(paths[role]) if hasattr(obj, "save_pretrained") else obj.save_config(paths[role])
    pipe = load_pipeline("sd15", overrides=paths)
    enc = encoder_from_preset("sd15", overrides=paths)
    assert enc.mode == "compat" and enc.target_length == 240 and type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    with torch.no_grad():
        kw = enc.encode(["A red bicycle. A cat sleeps in its basket? " * 3] * 2).to_pipeline_kwargs()
        img = pipe(**kw, num_inference_steps=2, height=16, width=16, output_type="pt").images
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
