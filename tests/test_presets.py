"Presets whose hub ids cannot be reached fail fast with a message naming the preset, the role and the override."
import json, os, socket, subprocess, sys, time
import pytest

CODE = """
import time
from transformers import CLIPTextModel
from longalign.core import load_role, ModelUnavailableError
t = time.time()
try:
    load_role({preset!r}, {role!r}, {cls})
    print('LOADED')
except ModelUnavailableError as e:
    print(f'{{time.time() - t:.2f}}|{{e}}')
"""

def closed_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return port

@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "closed-port"}], ids=["offline", "closed-port"])
@pytest.mark.parametrize("role,cls", [("text_encoder", "CLIPTextModel"), ("hpsv2", "None")])
def test_unreachable_hub_fails_fast_with_clear_message(tmp_path, env, role, cls):
    env = dict(env)
    if env.get("HF_ENDPOINT") == "closed-port": env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    full = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0", **env}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", CODE.format(preset="sd15", role=role, cls=cls)], env=full,
                       capture_output=True, text=True, timeout=120)
    wall = time.time() - t0
    out = r.stdout.strip().splitlines()[-1]
    assert "|" in out, r.stdout + r.stderr
    seconds, msg = out.split("|", 1)
    assert float(seconds) < 30, seconds   # the failure guarded against: ~54 s of download retries
    assert f"preset 'sd15', role '{role}'" in msg
    assert f"overrides={{'{role}': '/local/path'}}" in msg
    assert "Traceback" not in r.stderr

def test_override_with_local_path_is_used(tmp_path):
    "An override that points at a local folder loads from it, without the hub."
    from transformers import CLIPTextConfig, CLIPTextModel
    from longalign.core import load_role
    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=16)
    CLIPTextModel(cfg).save_pretrained(tmp_path / "te")
    m = load_role("sd15", "text_encoder", CLIPTextModel, overrides={"text_encoder": str(tmp_path / "te")})
    assert m.config.hidden_size == 32
    # papermill's `-p overrides '{...}'` arrives as a JSON string: the same load; a malformed one says what to write
    m = load_role("sd15", "text_encoder", CLIPTextModel, overrides=f'{{"text_encoder": "{tmp_path / "te"}"}}')
    assert m.config.hidden_size == 32
    with pytest.raises(ValueError, match="is not JSON"):
        load_role("sd15", "text_encoder", CLIPTextModel, overrides="{text_encoder: te}")

def test_run_config_records_what_reproduces_it(tmp_path):
    job = os.path.join(os.path.dirname(__file__), "harness_job.py")
    subprocess.run([sys.executable, job, "--out", str(tmp_path / "run"), "--steps", "2", "--checkpoint-every", "1"], check=True,
                   capture_output=True)
    rec = json.loads((tmp_path / "run" / "config.json").read_text())
    p = rec["preset"]
    assert p["name"] == "toy" and p["splitter"] in ("robust", "compat")
    for key in ("pad_star", "policy", "lora_format", "lora_targets", "lora_rank", "target_length", "models"):
        assert p[key], key
    assert rec["train"]["seed"] == 0 and rec["train"]["batch_size"] == 8
    import torch, diffusers, transformers
    assert rec["versions"]["diffusers"] == diffusers.__version__ and rec["versions"]["transformers"] == transformers.__version__
    assert rec["versions"]["torch"] == torch.__version__


def test_sdxl_preset_fails_fast_offline_and_refuses_t5(tmp_path):
    code = """
from longalign.core import ModelUnavailableError
from longalign.encoding import encoder_from_preset
from longalign.longsd import load_long_sd
try: encoder_from_preset("sdxl", "clip+t5")
except ValueError as e: print("T5|" + str(e))
try: load_long_sd("sdxl")
except ModelUnavailableError as e: print("HUB|" + str(e))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    lines = dict(l.split("|", 1) for l in r.stdout.strip().splitlines() if "|" in l)
    assert set(lines) == {"T5", "HUB"}, r.stdout + r.stderr[-2000:]
    assert "preset 'sdxl' is SDXL" in lines["T5"] and "encoders='clip-cat'" in lines["T5"]
    assert "preset 'sdxl', role 'unet'" in lines["HUB"] and "stabilityai/stable-diffusion-xl-base-1.0" in lines["HUB"]
    assert "overrides={'unet': '/local/path'}" in lines["HUB"]
