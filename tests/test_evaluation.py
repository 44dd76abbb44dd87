"""The evaluation layer's bookkeeping: sample folders that know their settings, tables keyed by theirs, VQA errors that are
not swallowed, and the official LongSD LoRA format written by the official save routine's logic."""
import copy, io, json, random, urllib.error
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
    other = tmp_path / "other"; other.mkdir(); (other / "0.png").write_bytes(first["0.png"])   # images from elsewhere
    for resample in (False, True):                  # --resample does not touch them either
        with pytest.raises(ValueError, match=r"not written by longalign-sample \(it has no manifest.json\): choose an empty"):
            sample_folder(other, rows, seed=0, resample=resample, **kw)
    assert [p.name for p in other.iterdir()] == ["0.png"]


def test_resample_deletes_only_the_images_its_manifest_lists(tmp_path):
    "--resample deletes the {id}.png of the ids the old manifest lists and longalign-eval's files about them; nothing else."
    from longalign.evaluation import sample_folder
    from longalign.experiments import toy_world
    kw = dict(encoders=None, steps=2, batch_size=2, zoo=toy_world("smoke"), progress=False)
    rows, out = _toy_rows(2), tmp_path / "imgs"
    sample_folder(out, rows, seed=0, **kw)
    assert json.loads((out / "manifest.json").read_text())["ids"] == ["0", "1"]
    (out / "mine.png").write_bytes(b"a user's file"); (out / "notes.txt").write_text("keep")
    (out / "eval").mkdir(); (out / "eval" / "summary.csv").write_text("old scores"); (out / "eval" / "plot.png").write_bytes(b"p")
    sample_folder(out, rows[:1], seed=1, resample=True, **kw)
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "mine.png"]      # 1.png was the old run's: deleted
    assert (out / "mine.png").read_bytes() == b"a user's file" and (out / "notes.txt").exists()
    assert (out / "eval" / "plot.png").exists() and not (out / "eval" / "summary.csv").exists()
    # an id that would name a file outside the folder: refused, in the prompts and in an old manifest
    victim = tmp_path / "victim.png"; victim.write_bytes(b"v")
    with pytest.raises(ValueError, match=r"id '\.\./victim' in the prompts"):
        sample_folder(out, [{"id": "../victim", "caption": rows[0]["caption"]}], seed=1, **kw)
    man = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**man, "ids": ["0", "../victim"]}))
    with pytest.raises(ValueError, match=r"id '\.\./victim' in .*manifest.json"):
        sample_folder(out, rows, seed=2, resample=True, **kw)
    assert victim.exists() and (out / "0.png").exists()


def test_a_run_that_fails_before_its_first_image_does_not_block_the_rerun(tmp_path):
    "manifest.json comes with the first image: a run that fails earlier (a model not found) leaves the folder open."
    from longalign.core import ModelUnavailableError
    from longalign.evaluation import sample_folder
    from longalign.experiments import toy_world
    kw = dict(encoders=None, batch_size=2, zoo=toy_world("smoke"), progress=False)
    out = tmp_path / "imgs"
    with mock.patch("longalign.evaluation.load_pipeline", side_effect=ModelUnavailableError("unet not found")):
        with pytest.raises(ModelUnavailableError): sample_folder(out, _toy_rows(2), steps=3, **kw)
    assert not (out / "manifest.json").exists()
    sample_folder(out, _toy_rows(2), steps=2, **kw)      # the corrected rerun, with other settings: no --resample needed
    assert json.loads((out / "manifest.json").read_text())["steps"] == 2 and len(list(out.glob("*.png"))) == 2


def _module_moves(fn) -> set:
    "(class name, device) of every `nn.Module.to` call while `fn` runs."
    seen, real = set(), nn.Module.to
    def spy(self, *args, **kwargs):
        seen.add((type(self).__name__, str(args[0] if args else kwargs.get("device"))))
        return real(self, *args, **kwargs)
    with mock.patch.object(nn.Module, "to", spy): fn()
    return seen


def test_device_reaches_the_models(tmp_path):
    "`device` moves the pipeline, T5 and its adapter (sampling), the preference model (scoring); a bad one is a clear error."
    from longalign.evaluation import evaluate_folder, sample_folder
    from longalign.experiments import toy_world
    zoo = toy_world("smoke")
    out = tmp_path / "imgs"
    moved = _module_moves(lambda: sample_folder(out, _toy_rows(1), encoders="clip+t5", steps=2, zoo=zoo, progress=False, device="cpu"))
    assert {("UNet2DConditionModel", "cpu"), ("AutoencoderKL", "cpu"), ("T5EncoderModel", "cpu"), ("TextAdapter", "cpu")} <= moved, moved
    moved = _module_moves(lambda: evaluate_folder(out, metrics=("denscore",), zoo=zoo, progress=False, device="cpu"))
    assert ("PreferenceModel", "cpu") in moved, moved
    for bad, why in (("gpu", "not a torch device"), ("cuda:99", "CUDA devices")):
        with pytest.raises(ValueError, match=rf"device='{bad}' \(--device\).*{why}"):
            sample_folder(tmp_path / "x", _toy_rows(1), encoders=None, zoo=zoo, progress=False, device=bad)


def test_a_mistyped_reference_fails_before_any_scoring(tmp_path):
    "A reference folder that is not there (or holds no image) fails at once: nothing is scored, eval/ is left as it was."
    from longalign.evaluation import evaluate_folder, sample_folder
    from longalign.experiments import toy_world
    zoo = toy_world("smoke")
    out = sample_folder(tmp_path / "imgs", _toy_rows(2), encoders=None, steps=2, zoo=zoo, progress=False)
    (out / "eval").mkdir(); (out / "eval" / "samples.jsonl").write_text("earlier scores\n")
    (tmp_path / "empty").mkdir()
    with mock.patch("longalign.evaluation.load_reward_model", side_effect=AssertionError("scoring started")):
        for ref, why in ((tmp_path / "refrence", "not found"), (tmp_path / "empty", "holds no images")):
            with pytest.raises(ValueError, match=f"reference folder .*{why}"):
                evaluate_folder(out, metrics=("denscore", "fid"), reference=ref, zoo=zoo, progress=False)
    assert (out / "eval" / "samples.jsonl").read_text() == "earlier scores\n"


def test_integer_ids_and_fid_of_a_single_image(tmp_path):
    """Rows from the Python API may carry integer ids: they name the same {id}.png as their strings, and --resample finds
    them in the manifest; FID of a folder with one readable image is refused with its name, not a covariance error."""
    from longalign.evaluation import evaluate_folder, sample_folder
    from longalign.experiments import toy_world
    zoo = toy_world("smoke")
    rows = [{"id": i, "caption": r["caption"]} for i, r in enumerate(_toy_rows(2))]
    out = sample_folder(tmp_path / "imgs", rows, encoders=None, steps=2, zoo=zoo, progress=False)
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"]
    sample_folder(out, rows, encoders=None, steps=2, seed=1, zoo=zoo, progress=False, resample=True)   # other settings: replaced
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"]
    ref = tmp_path / "ref"; ref.mkdir()
    for name in ("a.png", "b.png"): (ref / name).write_bytes((out / "0.png").read_bytes())
    (out / "1.png").unlink()
    with pytest.raises(ValueError, match="has 1 readable image with a prompt; FID needs at least 2"):
        evaluate_folder(out, metrics=("fid",), reference=ref, zoo=zoo, progress=False)


def test_fid_read_batch_by_batch_equals_fid_of_all_images_at_once(tmp_path):
    """FID streams both folders through the features, `batch_size` images at a time (at the first features, no more than
    one batch has been read), and equals FID of all images read at once and resized to the first image's size."""
    import torch.nn.functional as F
    from PIL import Image
    from longalign import evaluation
    from longalign.core import image_from_bytes
    from longalign.evaluation import _to_pil, evaluate_folder, fid
    from longalign.experiments import toy_world
    from longalign.toyworld import toy_image_features
    zoo, g = toy_world("smoke"), torch.Generator().manual_seed(0)
    imgs, ref = tmp_path / "imgs", tmp_path / "ref"; imgs.mkdir(); ref.mkdir()
    rows = _toy_rows(7)
    for i, r in enumerate(rows): _to_pil(torch.rand(3, *((40, 40) if i == 3 else (32, 32)), generator=g)).save(imgs / f"{r['id']}.png")
    (imgs / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i in range(6): _to_pil(torch.rand(3, 48, 48, generator=g)).save(ref / f"r{i}.png")
    reads, read_at_first_features = [], []
    def counting_read(data): reads.append(1); return image_from_bytes(data)
    def features(zoo_, x):
        if not read_at_first_features: read_at_first_features.append(len(reads))
        return toy_image_features(zoo_, x)
    with mock.patch.object(evaluation, "image_from_bytes", counting_read), mock.patch.object(evaluation, "toy_image_features", features):
        got = evaluate_folder(imgs, metrics=("fid",), reference=ref, zoo=zoo, batch_size=3, progress=False).set_index("metric")
    assert read_at_first_features == [3] and len(reads) == 13
    load = lambda d: [image_from_bytes(p.read_bytes()) for p in sorted(d.glob("*.png"))]
    same = lambda ims: torch.stack([F.interpolate(im[None], size=(32, 32), mode="bilinear", antialias=True)[0]
                                    if im.shape[-2:] != (32, 32) else im for im in ims])
    want = fid(lambda x: toy_image_features(zoo, x), same(load(imgs)), same(load(ref)))
    assert got.loc["fid", "n"] == 7 and want > 0.1          # two different sets: a number that can be wrong
    assert abs(got.loc["fid", "value"] - want) <= 1e-6 * want, (got.loc["fid", "value"], want)


def _http_error(code, body=b'{"error": {"message": "unknown model gpt-4q"}}'):
    return urllib.error.HTTPError("https://api.example/v1/chat/completions", code, "status", {}, io.BytesIO(body))


class _FailingClient:
    "Raises the given errors in turn, then answers 'first'."
    def __init__(self, *errors): self.errors, self.calls = list(errors), 0
    def complete(self, model, messages):
        self.calls += 1
        if self.errors: raise self.errors.pop(0)
        return "first"


def test_judge_retries_only_network_errors_rate_limits_and_server_errors():
    from longalign.evaluation import JudgeError, PairwiseJudge
    a, b, waits = torch.zeros(3, 8, 8), torch.ones(3, 8, 8), []
    flaky = _FailingClient(_http_error(429), _http_error(503), urllib.error.URLError("connection reset"), TimeoutError("slow"))
    j = PairwiseJudge(flaky, sleep=waits.append, backoff=1.0)
    assert j.ask("x", a, b) == "first" and flaky.calls == 5 and waits == [1.0, 2.0, 4.0, 8.0]
    APIConnectionError = type("APIConnectionError", (Exception,), {})      # the openai client's, not a ConnectionError
    ReadTimeout = type("ReadTimeout", (type("TimeoutException", (type("TransportError", (Exception,), {}),), {}),), {})  # httpx's
    flaky = _FailingClient(APIConnectionError("no route"), ReadTimeout("slow"))
    assert PairwiseJudge(flaky, sleep=lambda s: None).ask("y", a, b) == "first" and flaky.calls == 3
    for err in (_http_error(400), _http_error(401, b"invalid api key"), KeyError("choices")):
        client = _FailingClient(err)
        with pytest.raises(JudgeError, match="not retried") as e:
            PairwiseJudge(client, sleep=waits.append).ask("x", a, b)
        assert client.calls == 1 and e.value.__cause__ is err
    with pytest.raises(JudgeError, match="HTTP Error 400.*response body: .*unknown model gpt-4q"):
        PairwiseJudge(_FailingClient(_http_error(400))).ask("x", a, b)
    with pytest.raises(JudgeError, match="failed 2 times.*503"):
        PairwiseJudge(_FailingClient(*[_http_error(503)] * 5), retries=1, sleep=waits.append).ask("x", a, b)


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
