"""Record the official AnyDoor demo (ali-vilab/AnyDoor @ 44ca2b2a) on a tiny random ControlLDM.

    python record_anydoor.py ANYDOOR_CHECKOUT OUT_FOLDER

Builds the official `cldm.cldm.ControlLDM` from a tiny OmegaConf (the official config's classes and options at
tiny widths), saves its state dict with the official key names, then runs the demo's own
`inference_single_image` (run_gradio_demo.py: process_pairs, DINOv2 conditioning with an all-zero image as the
unconditional one, DDIMSampler.sample, decode, crop_back, the background pasted back outside the target box) on
each case, and records every stage by observing the official calls (wrappers that return what they were given).
"""

import ast
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(1)
CHECKOUT, OUT = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
HERE = Path(__file__).resolve().parent
# modules.py imports these text encoders (unused by AnyDoor); resolved before the torchvision stand-in is on the path,
# which transformers would otherwise take for the real torchvision
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer  # noqa: E402,F401

sys.path[:0] = [str(HERE / "stubs"), str(CHECKOUT)]
os.chdir(CHECKOUT)  # modules.py reads ./configs/anydoor.yaml and appends ./dinov2 to sys.path when imported

import cv2  # noqa: E402
import einops  # noqa: E402
from cldm.ddim_hacked import DDIMSampler  # noqa: E402
from cldm.model import create_model  # noqa: E402
from ldm.modules.encoders import modules  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# --- stand-ins for what needs CUDA or the 4.5 GB DINOv2 ViT-g/14 weights -------------------------------------------
torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the demo moves tensors to CUDA; this is a CPU run
DDIMSampler.register_buffer = lambda self, name, attr: setattr(self, name, attr)  # official: forces CUDA
from dinov2.models import vision_transformer as vits  # noqa: E402  (the vendored DINOv2, as hubconf builds it)


def tiny_dino_init(self, device="cpu", freeze=True, num_heads=2):
    """FrozenDinoV2Encoder.__init__ with a tiny vendored DinoVisionTransformer (official: ViT-g/14, 1536 wide)."""
    modules.AbstractEncoder.__init__(self)
    self.model = vits.DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=32, depth=2, num_heads=num_heads,
                                            init_values=1.0, ffn_layer="swiglufused", block_chunks=0)
    self.device = device
    if freeze:
        self.freeze()
    self.image_mean = torch.tensor([0.485, 0.456, 0.406]).unsqueeze(0).unsqueeze(-1).unsqueeze(-1)
    self.image_std = torch.tensor([0.229, 0.224, 0.225]).unsqueeze(0).unsqueeze(-1).unsqueeze(-1)
    self.projector = torch.nn.Linear(32, 32)


modules.FrozenDinoV2Encoder.__init__ = tiny_dino_init

# attention at the second level only: self-attention over the 64x64 latent would cost seconds per step on a CPU
TINY_NET = dict(image_size=32, in_channels=4, model_channels=32, attention_resolutions=[2], num_res_blocks=1,
                channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True,
                use_linear_in_transformer=True, transformer_depth=1, context_dim=32, legacy=False)
TINY_CONFIG = {"model": {
    "target": "cldm.cldm.ControlLDM",
    "params": {
        "linear_start": 0.00085, "linear_end": 0.0120, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "ref", "control_key": "hint",
        "image_size": 64, "channels": 4, "cond_stage_trainable": False, "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema", "scale_factor": 0.18215, "use_ema": False, "only_mid_control": False,
        "control_stage_config": {"target": "cldm.cldm.ControlNet", "params": {**TINY_NET, "hint_channels": 4}},
        "unet_config": {"target": "cldm.cldm.ControlledUnetModel", "params": {**TINY_NET, "out_channels": 4}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss",
            "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                         "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [],
                         "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenDinoV2Encoder",
                              "params": {"device": "cpu", "num_heads": 2}},  # the tiny encoder's (see above)
    },
}}


def build_model():
    import yaml

    (OUT / "tiny-anydoor.yaml").write_text(yaml.safe_dump(TINY_CONFIG, sort_keys=False))
    torch.manual_seed(0)
    model = create_model(str(OUT / "tiny-anydoor.yaml")).eval()
    with torch.no_grad():  # every weight at random, zero convs and layer scales included: no stage is trivial
        for name, p in model.named_parameters():
            norm = name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "norm_out.weight"))
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.05) + (1.0 if norm else 0.0))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, OUT / "tiny-anydoor.safetensors")
    return model


# --- the demo's own functions, taken from run_gradio_demo.py (its top level loads gradio and the real weights) ---
DEMO = (CHECKOUT / "run_gradio_demo.py").read_text()


def demo_functions(model, ddim_sampler) -> dict:
    import datasets.data_utils as data_utils

    ns = {**vars(data_utils), "np": np, "cv2": cv2, "torch": torch, "einops": einops, "model": model,
          "ddim_sampler": ddim_sampler, "save_memory": False}
    for node in ast.parse(DEMO).body:
        if isinstance(node, ast.FunctionDef) and node.name in ("crop_back", "process_pairs", "inference_single_image"):
            exec(ast.get_source_segment(DEMO, node), ns)
    return ns


def synthetic_case(folder: Path, frame_size, subject_size, box, seed):
    rng = np.random.default_rng(seed)
    w, h = frame_size
    yy, xx = np.mgrid[:h, :w]
    frame = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx * 3 + yy * 2) % 256)], -1).astype(np.uint8)
    frame = np.clip(frame.astype(int) + rng.integers(-20, 20, frame.shape), 0, 255).astype(np.uint8)
    sw, sh = subject_size
    sy, sx = np.mgrid[:sh, :sw]
    subject = np.stack([(sx * 7) % 256, (sy * 5) % 256, ((sx + sy) * 3) % 256], -1).astype(np.uint8)
    alpha = ((((sy - sh / 2) / (sh * 0.45)) ** 2 + ((sx - sw / 2) / (sw * 0.4)) ** 2) < 1).astype(np.uint8) * 255
    target = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    target[y1:y2, x1:x2] = 255
    Image.fromarray(frame).save(folder / "background.png")
    Image.fromarray(np.dstack([subject, alpha])).save(folder / "subject.png")
    Image.fromarray(alpha).save(folder / "subject_mask.png")
    Image.fromarray(target).save(folder / "target_mask.png")


def record_case(model, name, *, frame_size, subject_size, box, seed, steps, guidance_scale=4.5, strength=1.0):
    folder = OUT / f"case-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    synthetic_case(folder, frame_size, subject_size, box, seed)
    # as run_local reads the demo's inputs: RGB images, masks thresholded at 128 (run_gradio_demo.py)
    ref_image = np.asarray(Image.open(folder / "subject.png").convert("RGB"))
    ref_mask = np.where(np.asarray(Image.open(folder / "subject_mask.png")) > 128, 1, 0).astype(np.uint8)
    tar_image = np.asarray(Image.open(folder / "background.png").convert("RGB")).copy()
    tar_mask = np.where(np.asarray(Image.open(folder / "target_mask.png")) > 128, 1, 0).astype(np.uint8)

    sampler = DDIMSampler(model)
    stages: dict = {}
    record: dict = {}
    ns = demo_functions(model, sampler)

    def observe(owner, attr, key):
        original = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)

        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            record.setdefault(key, []).append((args, kwargs, out))
            return out

        if isinstance(owner, dict):
            owner[attr] = wrapper
        else:
            setattr(owner, attr, wrapper)

    observe(ns, "process_pairs", "pairs")
    observe(model, "get_learned_conditioning", "tokens")
    observe(model, "decode_first_stage", "decoded")
    apply_model = model.apply_model
    step = {"i": 0, "branch": 0}

    def apply_and_record(x, t, cond, *args, **kwargs):
        out = apply_model(x, t, cond, *args, **kwargs)
        i, branch = step["i"], ("cond", "uncond")[step["branch"]]
        if branch == "cond":
            stages[f"x_in.{i}"] = x.clone()
        n = len(sampler.ddim_timesteps)  # scheduled by sample() before the first call
        if i in (0, n // 2, n - 1):  # the networks' outputs at the first, middle and last step
            stages[f"eps_{branch}.{i}"] = out.clone()
        step["branch"] ^= 1
        if step["branch"] == 0:
            step["i"] += 1
        return out

    model.apply_model = apply_and_record
    np.random.seed(seed)  # process_pairs draws three ratios from NumPy's global generator
    torch.manual_seed(seed)  # DDIMSampler draws the starting noise with torch.randn
    try:
        with torch.no_grad():
            frame = ns["inference_single_image"](ref_image.copy(), ref_mask.copy(), tar_image.copy(), tar_mask.copy(),
                                                 strength, steps, guidance_scale, seed, False)
    finally:
        model.apply_model = apply_model
        for attr in ("get_learned_conditioning", "decode_first_stage"):
            delattr(model, attr)
    item = record["pairs"][0][2]
    (_, _, cond), (_, _, uncond) = record["tokens"][0], record["tokens"][1]
    decoded_latent = record["decoded"][0][0][0]
    collage = ((item["hint"][..., :3] + 1.0) * 127.5).round().astype(np.uint8)
    rebuilt = np.concatenate([collage.astype(np.float32) / 127.5 - 1.0, item["hint"][..., 3:]], -1)
    assert np.array_equal(rebuilt, item["hint"]) and item["hint"].dtype == np.float32, "the hint is a uint8 collage"
    stages.update(
        ref=torch.from_numpy(item["ref"].copy()).float()[None].permute(0, 3, 1, 2),
        # the hint as uint8 collage + its mask channel (-1 padding, 0, 1): hint = [collage / 127.5 - 1, mask]
        collage=torch.from_numpy(collage), collage_mask=torch.from_numpy(item["hint"][..., 3].astype(np.int8)),
        cond_tokens=cond, uncond_tokens=uncond,
        timesteps=torch.from_numpy(np.flip(sampler.ddim_timesteps).copy()).long(),
        x_T=stages["x_in.0"].clone(), latent=decoded_latent, frame=torch.from_numpy(np.ascontiguousarray(frame)),
    )
    save_file({k: v.detach().clone().contiguous() for k, v in stages.items()}, folder / "stages.safetensors")
    ratios_rng = np.random.RandomState(seed)
    spec = dict(seed=seed, steps=steps, ddim_steps_run=int(len(sampler.ddim_timesteps)), guidance_scale=guidance_scale,
                control_strength=strength, recipe="demo", margin=3, target_box=list(box),
                ratios=[ratios_rng.randint(11, 15) / 10, ratios_rng.randint(11, 12) / 10,
                        ratios_rng.randint(13, 30) / 10],
                background="background.png", subject="subject.png", subject_mask="subject_mask.png",
                target_mask="target_mask.png", tar_box_yyxx=[int(v) for v in item["tar_box_yyxx"]])
    (folder / "case.json").write_text(json.dumps(spec, indent=1))
    print(name, frame_size, "steps run", spec["ddim_steps_run"], "ratios", spec["ratios"])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    model = build_model()
    record_case(model, "square-30", frame_size=(256, 256), subject_size=(120, 160), box=(70, 60, 190, 200), seed=11,
                steps=30)
    record_case(model, "wide-50", frame_size=(320, 192), subject_size=(140, 100), box=(40, 50, 200, 150), seed=23,
                steps=50)
    record_case(model, "border-10", frame_size=(192, 288), subject_size=(90, 150), box=(100, 0, 192, 130), seed=5,
                steps=10)
