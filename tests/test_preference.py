"""Batch-mode common direction across processes, against the dataset-mode direction."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from longalign.preference import batch_common_direction, common_direction

SCRIPT = textwrap.dedent('''
    import sys, torch
    from accelerate import Accelerator
    from longalign.preference import batch_common_direction
    acc = Accelerator(cpu=True)
    data = torch.load(sys.argv[1])
    per = len(data) // acc.num_processes                 # equal per-process batches that cover the dataset exactly
    mine = data[acc.process_index * per:(acc.process_index + 1) * per]
    V = batch_common_direction(mine, acc)
    if acc.is_main_process: torch.save({"V": V, "processes": acc.num_processes, "rows": len(mine)}, sys.argv[2])
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
