"""Preference models: the batch-mode common direction across processes, open_clip models, and the sd15 training path on local files."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from longalign.decomposition import batch_common_direction, common_direction

SCRIPT = textwrap.dedent('''
    import sys, torch
    from accelerate import Accelerator
    from longalign.decomposition import batch_common_direction
    acc = Accelerator(cpu=True)
    data = torch.load(sys.argv[1])
    per = len(data) // acc.num_processes                 # equal per-process batches that cover the dataset exactly
    mine = data[acc.process_index * per:(acc.process_index + 1) * per]
    V = batch_common_direction(mine, acc)
    if acc.is_main_process: torch.save({"V": V, "processes": acc.num_processes, "rows": len(mine)}, sys.argv[2])
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()           # leaving it to interpreter exit aborted a rank once ("terminate called")
''')


def test_batch_direction_over_two_processes_equals_dataset_direction(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = torch.nn.functional.normalize(torch.randn(64, 16, generator=g) + torch.linspace(0, 2, 16), dim=1)
    data[:32] += 0.5                                     # the two halves differ: one process alone would get another V
    torch.save(data, tmp_path / "data.pt")
    (tmp_path / "job.py").write_text(SCRIPT)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(tmp_path / "job.py"), str(tmp_path / "data.pt"),
                        str(tmp_path / "out.pt")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["processes"] == 2 and out["rows"] == 32
    torch.testing.assert_close(out["V"], common_direction(data))
    assert not torch.allclose(common_direction(data[:32]), common_direction(data), atol=1e-3)
    torch.testing.assert_close(batch_common_direction(data), common_direction(data))   # one process: the same function


def test_open_clip_model_scores_like_its_own_towers():
    """HPSv2 is an open_clip ViT-H-14; a tiny open_clip CLIP takes the same path."""
    import open_clip
    from longalign.preference import CLIP_MEAN, CLIP_STD, PreferenceModel
    torch.manual_seed(0)
    model = open_clip.model.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
                                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    pm = PreferenceModel(model, tok).eval()
    assert pm.is_open_clip and pm.image_size == 32
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    texts = ["a red circle.", "a blue square. it is small.", "a green triangle."]
    with torch.no_grad():
        got = pm.score(x, texts)
        c = int(40 * 504 / 512); o = (40 - c) // 2
        crop = torch.nn.functional.interpolate(x[..., o:o + c, o:o + c], size=(32, 32), mode="bilinear", antialias=True)
        pix = (crop - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
        img = torch.nn.functional.normalize(model.encode_image(pix), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)
        torch.testing.assert_close(got, 100 * (img * txt).sum(-1))
        seg = pm.denscore(x, texts)
        segs = [torch.nn.functional.normalize(model.encode_text(tok(["a blue square.", "it is small."])), dim=-1).mean(0)]
        torch.testing.assert_close(seg[1], 100 * (img[1] * segs[0]).sum())


def _tiny_clip():
    "A random-weight CLIP (seed 0), frozen, small enough for a CPU test."
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
    return CLIPModel(cfg).eval().requires_grad_(False)


def _tiny_clip_h(folder):
    "`_tiny_clip` saved like CLIP-H's hub folder (weights + tokenizer)."
    from longalign.toyworld import clip_tokenizer
    _tiny_clip().save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    return folder


def test_sd15_denscore_through_papermill_from_local_files(tmp_path):
    """The documented real-world command, `papermill nbs/02_denscore.ipynb … -p preset sd15`, on local files: a CLIP
    folder in place of CLIP-H and Pick-a-Pic-schema parquet in place of Pick-a-Pic with long captions."""
    import json, pandas as pd, papermill
    from transformers import CLIPModel, CLIPTokenizer
    from longalign.preference import PreferenceModel, preference_table, run_preference
    from longalign.toyworld import image_from_bytes, preference_dataset
    clip_h = _tiny_clip_h(tmp_path / "clip_h")
    table = preference_dataset(8, seed=3)
    (tmp_path / "pairs").mkdir()
    table.to_parquet(tmp_path / "pairs" / "train-0.parquet")
    table.remove_columns(["long_caption"]).to_parquet(tmp_path / "short.parquet")
    nbs = Path(__file__).parents[1] / "nbs"
    run = tmp_path / "run"
    papermill.execute_notebook(str(nbs / "02_denscore.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(nbs), kernel_name="python3",
                               progress_bar=False, parameters=dict(preset="sd15", pairs=str(tmp_path / "pairs"), steps=2,
                                                                   batch_size=4, overrides={"clip_h": str(clip_h)}, output_dir=str(run)))
    # PickScore's recipe, with the notebook's steps and batch in place of its 4,000 and 128
    cfg = json.loads((run / "config.json").read_text())["settings"]["preference"]
    assert (cfg["steps"], cfg["batch_size"], cfg["lr"], cfg["weight_decay"], cfg["warmup_steps"], cfg["lr_scheduler"], cfg["loss"]) == \
        (2, 4, 3e-6, 0.3, 500, "linear", "seg-o")
    m = pd.read_csv(run / "metrics.csv")
    assert m[m.name == "loss"].step.max() == 2 and m[m.name == "skipped_rows"].value.max() == 0
    # saved like the released Denscore: plain from_pretrained loads it; it differs from the base it started from
    pm = PreferenceModel(CLIPModel.from_pretrained(run / "model"), CLIPTokenizer.from_pretrained(run / "model")).eval()
    base = PreferenceModel(CLIPModel.from_pretrained(clip_h), CLIPTokenizer.from_pretrained(clip_h)).eval()
    x = torch.stack([image_from_bytes(b) for b in table["jpg_0"][:4]])
    with torch.no_grad():
        got, before = pm.denscore(x, table["long_caption"][:4]), base.denscore(x, table["long_caption"][:4])
    assert got.shape == (4,) and not torch.allclose(got, before)
    # bad input fails before any weights load, and says what to do
    for kw, msg in [(dict(pairs=tmp_path / "short.parquet"), "LLaVA-Next"), (dict(pairs=tmp_path / "nope"), "no such file"),
                    (dict(pairs=None), "pairs is needed"), (dict(pairs=tmp_path / "pairs", loss="seg"), "choose one of")]:
        with pytest.raises((ValueError, FileNotFoundError), match=msg):
            run_preference(tmp_path / "bad", "sd15", overrides={"clip_h": str(tmp_path / "pairs")}, cpu=True, **kw)
    with pytest.raises(ValueError, match="toy_preference_model"):
        run_preference(tmp_path / "bad", "toy", pairs=tmp_path / "pairs")
    assert len(preference_table(tmp_path / "pairs" / "train-0.parquet")) == 8


def test_text_embeds_pad_to_the_longest_while_training_and_to_77_when_cached(tmp_path):
    """A training text tower pads a batch to its longest text (CLIP's causal tower gives the same embeddings, up to rounding);
    a frozen one pads to 77, exactly as before (05's resume test shows why: cached texts change the companions' lengths)."""
    from transformers import CLIPModel, CLIPTokenizer
    from longalign.core import feature_tensor as _features
    from longalign.preference import PreferenceModel
    folder = _tiny_clip_h(tmp_path / "clip")
    pm = PreferenceModel(CLIPModel.from_pretrained(folder).requires_grad_(False), CLIPTokenizer.from_pretrained(folder)).eval()
    texts = ["A red circle.", "The square in the top left corner of the picture is painted a clear blue.", "It is small."]
    enc = pm.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert pm.tokenizer(texts, padding="longest", return_tensors="pt").input_ids.shape[1] < 77
    with torch.no_grad():
        ref = torch.nn.functional.normalize(_features(pm.model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)), dim=-1)
        frozen = pm.text_embeds(texts)
    assert torch.equal(frozen, ref)
    pm.model.text_model.requires_grad_(True)
    training = pm.text_embeds(texts)
    assert training.requires_grad
    torch.testing.assert_close(training.detach(), ref)


def _sd15_folder(tmp_path, n=8):
    "A tiny CLIP-H stand-in and Pick-a-Pic-schema parquet pairs, for the sd15 path on local files."
    clip_h = _tiny_clip_h(tmp_path / "clip_h")
    from longalign.toyworld import preference_dataset
    table = preference_dataset(n, seed=3)
    (tmp_path / "pairs").mkdir()
    table.to_parquet(tmp_path / "pairs" / "train-0.parquet")
    return clip_h, table


def test_sd15_denscore_two_processes_through_the_notebooks_own_launch(tmp_path, monkeypatch):
    """`papermill nbs/02_denscore.ipynb … -p preset sd15 -p num_processes 2` through the notebook's notebook_launcher cell
    (two CPU processes): nothing in the kernel creates an Accelerator first, the toy zoo is not built, and the global batch
    is num_processes × per-device batch × accumulation, all recorded."""
    import json, pandas as pd, papermill
    clip_h, _ = _sd15_folder(tmp_path)
    monkeypatch.setenv("LONGALIGN_CACHE", str(tmp_path / "cache"))       # where a toy zoo would be built
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nbs = Path(__file__).parents[1] / "nbs"
    run = tmp_path / "run"
    nb = papermill.execute_notebook(str(nbs / "02_denscore.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(nbs), kernel_name="python3",
                                    progress_bar=False, parameters=dict(preset="sd15", pairs=str(tmp_path / "pairs"), steps=2, batch_size=8,
                                                                        per_device_batch=2, num_processes=2, overrides={"clip_h": str(clip_h)},
                                                                        output_dir=str(run)))
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "global batch 8 = 2 processes × 2 pairs × 2 accumulation steps" in outputs
    rec = json.loads((run / "config.json").read_text())
    assert rec["layout"] == {"num_processes": 2, "per_device_batch": 2, "grad_accum": 2}       # as the processes saw it
    assert (rec["train"]["batch_size"], rec["train"]["per_device_batch"], rec["settings"]["preference"]["per_device_batch"]) == (8, 2, 2)
    m = pd.read_csv(run / "metrics.csv")
    assert m[m.name == "loss"].step.tolist() == [1, 2]
    assert (run / "model" / "config.json").exists()
    assert not any(p.name.startswith(("vae", "clip-", "unet", "oracle")) for p in (tmp_path / "cache").glob("*"))   # no toy zoo
    # a global batch that does not split over the processes fails in the kernel, before any launch, and says what to change
    with pytest.raises(papermill.PapermillExecutionError, match="batch_size=9 .the global batch. must be a multiple of the 2 processes"):
        papermill.execute_notebook(str(nbs / "02_denscore.ipynb"), str(tmp_path / "bad.ipynb"), cwd=str(nbs), kernel_name="python3",
                                   progress_bar=False, parameters=dict(preset="sd15", pairs=str(tmp_path / "pairs"), steps=2, batch_size=9,
                                                                       per_device_batch=4, num_processes=2, overrides={"clip_h": str(clip_h)},
                                                                       output_dir=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


def test_bad_rows_are_skipped_with_their_reason_and_bugs_propagate(caplog):
    "Only data problems (`BadRow`) are skipped, each logged once with its reason; an error in the code is not a skipped row."
    import logging
    from unittest import mock
    import longalign.preference as P
    from longalign.toyworld import preference_dataset
    table = preference_dataset(6, seed=1).to_list()
    table[1]["jpg_0"] = b"not a png"
    table[2]["jpg_1"] = None
    table[3]["label_0"] = None
    table[4]["long_caption"] = "  "
    pairs = P.PreferencePairs(table, 32)
    with caplog.at_level(logging.WARNING, logger="longalign.preference"):
        rows = [pairs[i] for i in range(6)] + [pairs[1]]
    assert [r["long_caption"] for r in rows] == [table[i]["long_caption"] for i in (0, 5, 5, 5, 5, 5, 5)]   # the next good row
    assert sorted(pairs.skipped) == [1, 2, 3, 4]
    assert pairs.skipped[1].startswith("jpg_0 does not decode (UnidentifiedImageError")
    assert (pairs.skipped[2], pairs.skipped[3], pairs.skipped[4]) == ("jpg_1 is missing", "labels None, 0.0 are not numbers"
                                                                      if table[3]["label_1"] == 0 else f"labels None, {float(table[3]['label_1'])!r} are not numbers",
                                                                      "long_caption is empty")
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4 and "row 1 skipped: jpg_0 does not decode" in logged[0]       # once per row, with the reason
    with mock.patch.object(P, "_decode", side_effect=TypeError("a bug in our code")):
        with pytest.raises(TypeError, match="a bug in our code"):
            P.PreferencePairs(table, 32)[0]
    with pytest.raises(ValueError, match="no row of the preference table is usable; e.g. row 0: jpg_0 is missing"):
        P.PreferencePairs([{**table[0], "jpg_0": None}], 32)[0]


def test_prompt_weighting_is_pickscores_criterion(tmp_path):
    """PickScore's CLIPCriterion (trainer/criterions/clip_criterion.py, in_batch_negatives off): per pair, cross-entropy of
    the two logits against the labels, weighted by (1 / num_example_per_prompt) / sum over the batch, summed. Written
    out by hand here on random features, and through the trainer on a table with that column."""
    import math, pandas as pd
    from longalign.preference import PreferenceTrainConfig, WEIGHT_COLUMN, preference_loss, prompt_weights, train_preference_model
    g = torch.Generator().manual_seed(0)
    f = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)
    img0, img1, text = f(5, 8), f(5, 8), f(5, 8)
    label0, counts, scale = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0]), torch.tensor([1, 2, 2, 5, 10]), 100.0
    expected, total = 0.0, sum(1 / int(c) for c in counts)
    for i in range(5):
        m, n = scale * float(img0[i] @ text[i]), scale * float(img1[i] @ text[i])
        lse = max(m, n) + math.log(math.exp(m - max(m, n)) + math.exp(n - max(m, n)))
        ce = float(label0[i]) * (lse - m) + (1 - float(label0[i])) * (lse - n)
        expected += (1 / int(counts[i])) / total * ce
    got = preference_loss("single", img0, img1, label0, torch.tensor(scale), short=text, weights=prompt_weights(counts))
    assert abs(float(got) - expected) < 1e-4 * max(1.0, expected)
    unweighted = preference_loss("single", img0, img1, label0, torch.tensor(scale), short=text)
    assert abs(float(unweighted) - expected) > 1e-2               # the weights change the loss here
    # the option reaches the trainer: a table without the column is refused; with equal counts the first step's loss is the
    # unweighted one (the same seed, the same batch), with unequal counts it is not
    from transformers import CLIPModel, CLIPTokenizer
    from longalign.preference import PreferencePairs
    from longalign.toyworld import preference_dataset
    table = preference_dataset(8, seed=2)
    with pytest.raises(ValueError, match=f"prompt_weighting needs {WEIGHT_COLUMN}"):
        PreferencePairs(table, 32, prompt_weighting=True)
    folder = _tiny_clip_h(tmp_path / "clip")
    def first_loss(counts, weighting):
        t = table.add_column(WEIGHT_COLUMN, counts)
        out = tmp_path / f"run-{weighting}-{counts[0]}-{counts[1]}"
        cfg = PreferenceTrainConfig(loss="seg-o", steps=1, batch_size=8, prompt_weighting=weighting, warmup_steps=0)
        train_preference_model(CLIPModel.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder), t, out, cfg, progress=False, cpu=True)
        m = pd.read_csv(out / "metrics.csv")
        return float(m[m.name == "loss"].value.iloc[0])
    base = first_loss([3] * 8, False)
    assert abs(first_loss([3] * 8, True) - base) < 1e-5
    assert abs(first_loss([1, 9, 1, 9, 1, 9, 1, 9], True) - base) > 1e-4


def test_V_must_be_a_unit_direction_of_the_embeddings_dimension():
    from longalign.decomposition import decompose, reweight
    from longalign.preference import PreferenceModel
    from longalign.toyworld import clip_tokenizer
    g = torch.Generator().manual_seed(0)
    C = torch.nn.functional.normalize(torch.randn(4, 16, generator=g) + 1, dim=-1)
    V = common_direction(C)
    decompose(C, V); reweight(C, V.to(torch.bfloat16).float(), 0.5)          # a unit V, also one rounded through bf16
    for bad, what in ((2 * V, "norm"), (V[:8], "16 dimensions"), (V[None], "1-D"), (torch.zeros(16), "norm")):
        for f in (lambda: decompose(C, bad), lambda: reweight(C, bad, 0.0)):
            with pytest.raises(ValueError, match=f"V .*{what}.*common_direction"): f()
    pm = PreferenceModel(_tiny_clip(), clip_tokenizer())
    x, caps = torch.rand(2, 3, 32, 32, generator=g), ["A red circle.", "A cat. It sleeps."]
    with torch.no_grad():
        for f in (lambda: pm.denscore_o(x, caps, torch.randn(8)), lambda: pm.denscore(x, caps, V=3 * V)):
            with pytest.raises(ValueError, match="V .*common_direction"): f()
        V_pm = common_direction(pm.caption_embeds(caps))
        assert pm.denscore_o(x, caps, V_pm).shape == (2,)


def test_cached_text_embeds_follow_in_place_weight_changes():
    from longalign.preference import PreferenceModel
    from longalign.toyworld import clip_tokenizer
    m = _tiny_clip()
    pm = PreferenceModel(m, clip_tokenizer())
    a = pm.text_embeds(["A red circle."])
    assert torch.equal(pm.text_embeds(["A red circle."]), a)                    # cached
    with torch.no_grad(): m.text_projection.weight.mul_(-1)                     # new weights, loaded in place
    torch.testing.assert_close(pm.text_embeds(["A red circle."]), -a)
    pm.model.to(torch.float64)                                                  # another dtype: embeddings in that dtype
    assert pm.text_embeds(["A red circle."]).dtype == torch.float64


def test_open_clip_segments_split_at_its_context_length():
    "open_clip's tokenizer has no model_max_length: a sentence over 77 tokens is split by its own BPE count, not cut."
    import open_clip
    from longalign.preference import PreferenceModel
    torch.manual_seed(0)
    model = open_clip.model.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
                                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    pm = PreferenceModel(model, tok).eval()
    sentence = " and ".join(["a small red circle next to a tall blue square"] * 12) + "."
    assert len(tok.encode(sentence)) > 77
    segs = pm.segments("A cat sleeps. " + sentence)
    assert len(segs) > 2 and all(len(tok.encode(s)) <= 75 for s in segs)
    assert " ".join(segs).split() == ("A cat sleeps. " + sentence).split()   # nothing lost
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        e = torch.nn.functional.normalize(model.encode_text(tok(segs)), dim=-1).mean(0)
        img = pm.image_embeds(x)
        torch.testing.assert_close(pm.denscore(x, ["A cat sleeps. " + sentence]), 100 * (img * e).sum(-1))


def test_robust_split_with_a_tokenizer_it_cannot_count_falls_back_to_sentences_and_warns_once():
    "A tokenizer without a token count (open_clip's HFTokenizer, say): sentences are not split further, with one warning."
    import warnings
    from longalign.preference import PreferenceModel
    class Opaque:                                   # tokenizes, but tells neither its context length nor its BPE count
        def __call__(self, texts): return torch.zeros(len(texts), 77, dtype=torch.long)
    pm = PreferenceModel(_tiny_clip(), Opaque())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert pm.segments("A cat sleeps. A dog barks.") == ["A cat sleeps.", "A dog barks."]
        pm.segments("A bird sings.")
    assert [str(x.message) for x in w if "cannot count tokens" in str(x.message)][:1] and \
        sum("cannot count tokens" in str(x.message) for x in w) == 1


def test_random_init_like_leaves_the_global_rng_alone():
    from longalign.decomposition import random_init_like
    m = _tiny_clip()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = random_init_like(m), random_init_like(m)
    assert torch.equal(torch.get_rng_state(), state)                          # the caller's random stream goes on unchanged
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))   # and the untrained model is reproducible
