"""The evaluation layer's bookkeeping: sample folders that know their settings, tables keyed by theirs, VQA errors that are
not swallowed, and the official LongSD LoRA format written by the official save routine's logic."""
import copy, json, random
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn


def _toy_rows(n=3, seed=7):
    from longalign.toyworld import long_caption, scenes
    return [{"id": str(i), "caption": long_caption(s, random.Random(i)).text} for i, s in enumerate(scenes(n, seed=seed))]


def test_sample_folder_refuses_a_folder_sampled_with_other_settings(tmp_path):
    """A folder remembers what its images were sampled with (manifest.json); a rerun with the same settings continues,
    one with other settings is refused before anything changes, and resample=True replaces the images."""
    from longalign.evaluation import sample_folder
    from longalign.experiments import toy_world
    zoo = toy_world("smoke")
    rows, out = _toy_rows(), tmp_path / "imgs"
    kw = dict(encoders=None, steps=2, batch_size=2, zoo=zoo, progress=False)
    sample_folder(out, rows, seed=0, **kw)
    images = lambda d: {p.name: p.read_bytes() for p in sorted(Path(d).glob("*.png"))}
    first, prompts = images(out), (out / "prompts.jsonl").read_text()
    man = json.loads((out / "manifest.json").read_text())
    assert (man["preset"], man["encoders"], man["seed"], man["steps"], man["lora"], man["n_prompts"]) == ("toy", "base", 0, 2, [], 3)
    assert man["guidance"] == zoo.cfg.guidance and man["zoo"]["unet"] == zoo.entries["unet"].name
    sample_folder(out, rows, seed=0, **kw)                       # the same settings: nothing to do, the same images
    assert images(out) == first
    with pytest.raises(ValueError, match=r"3 images sampled with other settings \(seed\).*--resample"):
        sample_folder(out, rows, seed=1, **kw)
    other = [{"id": r["id"], "caption": rows[(i + 1) % 3]["caption"]} for i, r in enumerate(rows)]
    with pytest.raises(ValueError, match=r"other settings \(prompts\)"):
        sample_folder(out, other, seed=0, **kw)
    with pytest.raises(ValueError, match=r"other settings \(steps\)"):
        sample_folder(out, rows, **{**kw, "steps": 3})
    assert images(out) == first and (out / "prompts.jsonl").read_text() == prompts   # refusals changed nothing
    sample_folder(out, rows, seed=1, resample=True, **kw)        # explicit: the images of seed 1, as a fresh folder gets them
    sample_folder(tmp_path / "fresh", rows, seed=1, **kw)
    assert images(out) == images(tmp_path / "fresh") and images(out) != first
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    old = tmp_path / "old"; old.mkdir(); (old / "0.png").write_bytes(first["0.png"])   # an older version's folder
    with pytest.raises(ValueError, match="no manifest.json"):
        sample_folder(old, rows, seed=0, **kw)


def test_vqa_counts_unscorable_prompts_and_stops_on_other_errors(tmp_path):
    "A prompt the toy VQA cannot read is counted as unscorable; any other error inside the VQA score stops the evaluation."
    from longalign.evaluation import ToyVQA, evaluate_folder, sample_folder
    from longalign.experiments import toy_world
    zoo = toy_world("smoke")            # the toy preset's models, its 3-step smoke Denscore included
    rows = _toy_rows(2) + [{"id": "dog", "caption": "A photo of a dog on a beach."}]
    out = sample_folder(tmp_path / "imgs", rows, encoders=None, steps=2, zoo=zoo, progress=False)
    s = evaluate_folder(out, metrics=("vqa",), zoo=zoo, progress=False).set_index("metric")
    assert (s.loc["vqa", "n"], s.loc["skipped:unscorable_prompt", "n"]) == (2, 1)
    assert json.loads(s.loc["vqa", "versions"])["zoo"]            # which toy world scored it
    with mock.patch.object(ToyVQA, "__call__", side_effect=ValueError("a shape bug in our code")):
        with pytest.raises(ValueError, match="a shape bug in our code"):
            evaluate_folder(out, metrics=("vqa",), zoo=zoo, progress=False)


def test_tables_are_keyed_by_every_setting_that_changes_them(tmp_path):
    "03 records Tables 1 and 4 under its settings; 07 reads them back only with the same settings and the same zoo."
    from longalign.experiments import read_table, record_table, retrieval_table_settings, toy_world
    zoo = toy_world("smoke")
    zoo = copy.copy(zoo); zoo.cache_dir = tmp_path                  # tables written here, not in the shared cache
    settings = retrieval_table_settings(40, 20, 0, smoke=True)
    record_table("table1", [{"model": "CLIP", "R@1": 12.5}], zoo, settings)
    assert read_table("table1", zoo, settings)["R@1"].tolist() == [12.5]
    for other in (retrieval_table_settings(40, 10, 0, smoke=True), retrieval_table_settings(80, 20, 0, smoke=True),
                  retrieval_table_settings(40, 20, 1, smoke=True), retrieval_table_settings(40, 20, 0, smoke=False)):
        assert read_table("table1", zoo, other) is None
    assert retrieval_table_settings(40, 20, 0, True)["models"]["seg-o"]["steps"] == 3    # the models' training configs are in the key
    other_zoo = copy.copy(zoo); other_zoo.entries = {**zoo.entries, "unet": zoo.entries["unet"].with_name("unet-000000000000")}
    assert read_table("table1", other_zoo, settings) is None


# --- the official LongSD LoRA format, written as the official code writes it -------------------------------------------
# luping-liu/LongAlign, modules/lora.py: `inject_trainable_lora_extended(unet, target_replace_module={"ResnetBlock2D",
# "CrossAttention", "Attention", "GEGLU"}, r=32)` wraps every nn.Linear / nn.Conv2d found inside a module of those class
# names (modules visited in `model.modules()` order, layers in each one's `named_modules()` order, layers already wrapped
# skipped) in a layer that adds dropout(up(down(x))) × scale (scale 1): `down` has the wrapped layer's in-features (a conv:
# its kernel, stride and padding), `up` is linear (a conv: 1×1) to its out-features. `save_lora_weight` walks the same
# modules again, finds the wrapping layers in the same order and `torch.save`s the flat list [up.weight, down.weight, ...]
# in float16. Re-expressed below for the test; the walk collects first and wraps afterwards, which visits the layers in
# the order the official generator does while it wraps.

OFFICIAL_PARENTS = {"ResnetBlock2D", "CrossAttention", "Attention", "GEGLU"}


class OfficialLoraLayer(nn.Module):
    def __init__(self, layer, rank):
        super().__init__()
        self.layer, self.dropout, self.scale = layer, nn.Dropout(0.1), 1.0
        if isinstance(layer, nn.Linear):
            self.lora_down = nn.Linear(layer.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, layer.out_features, bias=False)
        else:
            self.lora_down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                       layer.groups, bias=False)
            self.lora_up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)

    def forward(self, x): return self.layer(x) + self.dropout(self.lora_up(self.lora_down(x))) * self.scale


def _official_walk(model, kinds):
    "(parent, attribute, layer) for each layer of `kinds` inside a target module, in the official order."
    for ancestor in model.modules():
        if type(ancestor).__name__ not in OFFICIAL_PARENTS: continue
        for name, layer in ancestor.named_modules():
            if not isinstance(layer, kinds): continue
            *path, leaf = name.split(".")
            parent = ancestor.get_submodule(".".join(path)) if path else ancestor
            if isinstance(parent, OfficialLoraLayer): continue
            yield parent, leaf, layer


def official_inject(model, rank):
    for parent, leaf, layer in list(_official_walk(model, (nn.Linear, nn.Conv2d))):
        setattr(parent, leaf, OfficialLoraLayer(layer, rank))


def official_save(model, path):
    weights = []
    for _, _, lora in _official_walk(model, OfficialLoraLayer):
        weights += [lora.lora_up.weight.detach().cpu().to(torch.float16), lora.lora_down.weight.detach().cpu().to(torch.float16)]
    torch.save(weights, path)
    return weights


def _tiny_unet():
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()


def test_official_lora_file_written_by_the_official_routine_merges_to_the_same_unet(tmp_path):
    from longalign.longsd import merge_official_lora, official_lora_modules
    base = _tiny_unet()
    trained = copy.deepcopy(base)
    official_inject(trained, rank=4)
    trained.eval()                        # the new layers' dropout off, as when the official code samples
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                 # "trained" LoRA weights, exactly representable in the float16 the file holds
        for _, _, lora in _official_walk(trained, OfficialLoraLayer):
            for w in (lora.lora_up.weight, lora.lora_down.weight):
                w.copy_((torch.randn(w.shape, generator=g) * 0.2).half().float())
    x, t, text = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 7, 32, generator=g)
    with torch.no_grad(): want, before = trained(x, t, text).sample, base(x, t, text).sample
    weights = official_save(trained, tmp_path / "s28750_lora_vis.pt")
    assert len(weights) == 2 * len(official_lora_modules(base))
    merged = copy.deepcopy(base)
    assert merge_official_lora(merged, tmp_path / "s28750_lora_vis.pt") == len(weights) // 2
    with torch.no_grad(): got = merged(x, t, text).sample
    assert (want - before).abs().max() > 0.1                      # the LoRA changes the output: the comparison can fail
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
