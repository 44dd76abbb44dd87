"""SDXL segment encoding (issue 22) on a tiny random-weight `StableDiffusionXLPipeline` built from configs: two CLIP towers
of different widths (so a swapped concatenation shows), the real BPE vocabulary, the second tokenizer padding with id 0."""
import pytest
import torch

from longalign.encoding import PAD, PAD_STAR, LongPromptEncoder, pad_star_embedding, split_segments, tiny_sdxl_pipeline

W1, W2, PROJ = 32, 48, 40          # tower widths (real SDXL: 768, 1280) and the second tower's projection (real: 1280)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sdxl_pipeline((W1, W2), PROJ)


SHORT = "A red circle. It is small. A blue square."


def test_sdxl_keep_all_at_77_equals_the_pipelines_encode_prompt(pipe):
    """Where the policies coincide (one segment, every special token and <pad> kept, 77 positions), the segment encoder is
    diffusers' SDXL encoding: both towers' penultimate states, the pooled vector, zeros for negative_prompt=None. Up to
    rounding: prompts and negatives go through the towers in one batch here, in two there, and on some CPUs (an AVX-512 Xeon)
    a product's last bit depends on the batch size."""
    from longalign.encoding import encoder_from_preset
    enc = LongPromptEncoder.from_pipe(pipe, target_length=77, policy="keep-all")
    assert enc.layer == "penultimate" and enc.zero_negative and enc.config()["towers"] == 2
    assert encoder_from_preset("sd15", pipe=pipe).config()["towers"] == 2        # a preset over an SDXL pipe: both towers
    with torch.no_grad():
        for neg in (None, "blurry, low quality."):
            ours = enc.encode_prompt([SHORT, "A green star."], negative_prompt=neg, num_images_per_prompt=2)
            ref = pipe.encode_prompt([SHORT, "A green star."], device="cpu", num_images_per_prompt=2,
                                     do_classifier_free_guidance=True, negative_prompt=neg)
            for a, b in zip(ours, ref): torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert ours[0].shape == (4, 77, W1 + W2) and ours[2].shape == (4, PROJ)
    assert not torch.equal(ours[1], torch.zeros_like(ours[1]))          # an explicit negative is encoded
    with torch.no_grad(): zero = enc.encode(SHORT)
    assert torch.equal(zero.negative_prompt_embeds, torch.zeros(1, 77, W1 + W2))
    assert torch.equal(zero.negative_pooled_prompt_embeds, torch.zeros(1, PROJ))


def test_sdxl_pad_star_and_pads_per_tower(pipe):
    tok1, tok2, te1, te2 = pipe.tokenizer, pipe.tokenizer_2, pipe.text_encoder, pipe.text_encoder_2
    empty1 = tok1([""], padding="max_length", max_length=77).input_ids[0]
    empty2 = tok2([""], padding="max_length", max_length=77).input_ids[0]
    assert empty1[:3] == [49406, 49407, 49407] and empty2[:3] == [49406, 49407, 0]
    with torch.no_grad():
        out = LongPromptEncoder.from_pipe(pipe).encode(SHORT)                # the paper's policy, 240 positions
        star1 = te1(torch.tensor([empty1]), output_hidden_states=True).hidden_states[-2][0, -60:].mean(0)
        star2 = te2(torch.tensor([empty2]), output_hidden_states=True).hidden_states[-2][0, -60:].mean(0)
        torch.testing.assert_close(pad_star_embedding(tok2, te2, layer="penultimate"), star2)
        # the first tower's <pad*> through the second tower's pad id would be another vector
        wrong = te2(torch.tensor([empty1]), output_hidden_states=True).hidden_states[-2][0, -60:].mean(0)
    assert not torch.allclose(star2, wrong, atol=1e-4)
    stars = out.prompt_embeds[0, out.token_types[0] == PAD_STAR]
    assert len(stars) == 240 - sum(len(tok1(s).input_ids) - 1 for s in split_segments(SHORT))
    torch.testing.assert_close(stars[:, :W1], star1.expand(len(stars), -1))
    torch.testing.assert_close(stars[:, W1:], star2.expand(len(stars), -1))
    # keep-all keeps each segment's own <pad>s: the first tower's are <eot> (49407), the second's '!' (0)
    with torch.no_grad(): kept = LongPromptEncoder.from_pipe(pipe, policy="keep-all", overflow="warn").encode("A red circle.")
    pads = kept.token_types[0] == PAD
    ids = tok2(["A red circle."], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad(): h2 = te2(ids, output_hidden_states=True).hidden_states[-2][0]
    torch.testing.assert_close(kept.prompt_embeds[0, :77, W1:], h2)
    assert pads.sum() == 77 - len(tok1("A red circle.").input_ids)


def test_sdxl_pooled_choices(pipe):
    """'truncate' (default) is diffusers' pooled vector of the text cut at 77 tokens, whatever its length; 'mean' averages the
    encoded segments' pooled vectors."""
    tok2, te2 = pipe.tokenizer_2, pipe.text_encoder_2
    long = " ".join(f"Object {i} is a {c} {s}." for i, (c, s) in enumerate([("red", "circle"), ("blue", "square")] * 10))
    with torch.no_grad():
        trunc = LongPromptEncoder.from_pipe(pipe).encode(long)
        ids = tok2([long], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        torch.testing.assert_close(trunc.pooled_prompt_embeds, te2(ids).text_embeds)
        mean = LongPromptEncoder.from_pipe(pipe, pooled="mean").encode(long)
        per_seg = [te2(tok2([s], padding="max_length", max_length=77, return_tensors="pt").input_ids).text_embeds[0]
                   for s in mean.segments[0]]
    assert len(per_seg) == 20 and not mean.dropped[0]
    torch.testing.assert_close(mean.pooled_prompt_embeds[0], torch.stack(per_seg).mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mean.prompt_embeds, trunc.prompt_embeds)          # only the pooled vector differs


def test_readme_snippet_on_sdxl(pipe):
    """`pipe(**enc.encode(long_prompt, negative_prompt="").to_pipeline_kwargs())` with batched prompts, negatives and
    num_images_per_prompt=2."""
    enc = LongPromptEncoder.from_pipe(pipe)
    prompts = ["A small red bicycle leans against a brick wall. A black cat sleeps in its basket. " * 4,
               "Ivy grows over the wall on the left. A blue door stands open on the right."]
    kw = enc.encode(prompts, negative_prompt="").to_pipeline_kwargs()
    assert set(kw) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"}
    assert kw["prompt_embeds"].shape == (2, 240, W1 + W2) and not kw["prompt_embeds"].requires_grad
    with torch.no_grad():
        img = pipe(**kw, num_images_per_prompt=2, num_inference_steps=2, output_type="pt",
                   generator=torch.Generator().manual_seed(0)).images
        img2 = pipe(**enc.encode(prompts, negative_prompt=["ugly.", "dark."]).to_pipeline_kwargs(), num_images_per_prompt=2,
                    num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == img2.shape == (4, 3, 16, 16) and torch.isfinite(img).all()
    assert (img - img2).abs().max() > 0                                   # the negatives reach the UNet


def test_from_pipe_refuses_other_pipelines(pipe):
    from diffusers import DDPMPipeline, DDPMScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DModel
    ddpm = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                         down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2),
                        scheduler=DDPMScheduler())
    with pytest.raises(TypeError, match="got a DDPMPipeline: it supports StableDiffusionPipeline.*StableDiffusionXLPipeline"):
        LongPromptEncoder.from_pipe(ddpm)
    refiner = StableDiffusionXLImg2ImgPipeline(vae=pipe.vae, text_encoder=None, text_encoder_2=pipe.text_encoder_2,
                                               tokenizer=None, tokenizer_2=pipe.tokenizer_2, unet=pipe.unet,
                                               scheduler=pipe.scheduler, add_watermarker=False)
    with pytest.raises(TypeError, match="StableDiffusionXLImg2ImgPipeline lacks a text tower"):
        LongPromptEncoder.from_pipe(refiner)
    with pytest.raises(ValueError, match="tokenizer_2 and text_encoder_2"):
        LongPromptEncoder(pipe.tokenizer, pipe.text_encoder, tokenizer_2=pipe.tokenizer_2)
    with pytest.raises(ValueError, match="encoders='clip\\+t5'"):
        LongPromptEncoder(pipe.tokenizer, pipe.text_encoder, tokenizer_2=pipe.tokenizer_2, text_encoder_2=pipe.text_encoder_2,
                          encoders="clip+t5", t5=1, t5_tokenizer=1, t5_adapter=1)
