"""RFT on two CPU processes through accelerate (torchrun) with the batch V: the run completes with two processes' checkpoints,
metrics and a trained LoRA, and the batch V counts the global batch (2 processes x 2; that `batch_common_direction` gathers
the processes' embeddings is tested in tests/test_preference.py)."""
import json, shutil, subprocess, sys, textwrap
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from longalign.toyworld import ZooConfig, build_zoo

JOB = """
import sys
from longalign.experiments import toy_preference_model, toy_prompts
from longalign.rft import RFTConfig, train_rft
from longalign.toyworld import ZooConfig, build_zoo
zoo = build_zoo(ZooConfig.smoke(), cache_dir=sys.argv[2], progress=False)
cfg = RFTConfig(steps=2, batch_size=4, sampler_steps=2, grad_steps=1, direction="batch", checkpoint_every=1)
train_rft(sys.argv[1], toy_prompts(16), toy_preference_model("clip", zoo=zoo), cfg, "toy", zoo=zoo, progress=False, cpu=True)
"""


def test_two_process_rft_with_gathered_direction(tmp_path):
    build_zoo(ZooConfig.smoke(), cache_dir=tmp_path / "zoo", progress=False)
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(tmp_path / "job.py"), str(tmp_path / "run"),
                        str(tmp_path / "zoo")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "checkpoints" / "step-0000002" / "state.json").read_text())["num_processes"] == 2
    m = pd.read_csv(run / "metrics.csv")
    assert sorted(m.step.unique()) == [1, 2] and m.value.notna().all()
    assert "global batch of 4" in r.stderr                       # batch V on a small batch warns
    w = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert any(v.abs().sum() > 0 for k, v in w.items() if ".lora.up." in k)
