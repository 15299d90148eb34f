"""Record the official InstantID pipeline (instantX-research/InstantID @ 2145b67f) on tiny random models.

    python record_instantid.py INSTANTID_CHECKOUT OUT_FOLDER

Builds tiny models of the official architectures (SDXL UNet + VAE + two CLIP text encoders, an IdentityNet
ControlNet, the official Resampler at tiny dims and random decoupled-attention projections), saves them in
OUT_FOLDER, then runs the official `StableDiffusionXLInstantIDPipeline.__call__` as `infer.py` does on each case
and records every stage by observing the official calls (wrappers that return what they were given).
Only `set_image_proj_model` is replaced: the official one hard-codes the full-size Resampler (1280 wide,
20 heads). The face analysis (insightface antelopev2) is not run: each case gives the embedding and keypoints
that `infer.py` would take from `face_info`.
"""

import ast
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(1)
CHECKOUT, OUT = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(CHECKOUT))
import pipeline_stable_diffusion_xl_instantid as official  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel,
)
from ip_adapter.resampler import Resampler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TOKENIZER = REPO / "tests/fixtures/anyv2v-reference/tiny-i2vgen-xl/tokenizer"

# infer.py's resize_img, taken from the file itself (infer.py imports insightface at the top, so it is not imported)
_infer = (CHECKOUT / "infer.py").read_text()
_fn = next(n for n in ast.parse(_infer).body if isinstance(n, ast.FunctionDef) and n.name == "resize_img")
_ns = {"Image": Image, "np": np}
exec(ast.get_source_segment(_infer, _fn), _ns)
resize_img = _ns["resize_img"]

RESAMPLER = dict(dim=64, depth=4, dim_head=64, heads=1, num_queries=16, embedding_dim=512, output_dim=32, ff_mult=4)


def build_tiny() -> None:
    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=8, transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 16,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
        scaling_factor=0.13025,
    )
    common = dict(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                  bos_token_id=tok.bos_token_id, pad_token_id=1)
    te1 = CLIPTextModel(CLIPTextConfig(**common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, projection_dim=16))
    # the SDXL-base scheduler config (stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
    )
    StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                              unet=unet, scheduler=sched).save_pretrained(OUT / "tiny-sdxl")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 8))
    with torch.no_grad():  # the zero convs at random: residuals that are not zero
        for name, p in net.named_parameters():
            if "zero_conv" in name or "controlnet_" in name:
                p.normal_(0, 0.05)
    net.save_pretrained(OUT / "tiny-identitynet")
    resampler = Resampler(**RESAMPLER)
    with torch.no_grad():
        for p in resampler.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ip = {}  # numbered over every attention processor, as the official set_ip_adapter loads them
    for i, name in enumerate(unet.attn_processors.keys()):
        if name.endswith("attn2.processor"):
            hidden = 32 if name.startswith(("mid_block", "down_blocks.1", "up_blocks.0")) else 16
            ip[f"{i}.to_k_ip.weight"] = torch.randn(hidden, 32) * 0.1
            ip[f"{i}.to_v_ip.weight"] = torch.randn(hidden, 32) * 0.1
    flat = {f"image_proj.{k}": v for k, v in resampler.state_dict().items()}
    flat |= {f"ip_adapter.{k}": v for k, v in ip.items()}
    save_file({k: v.contiguous() for k, v in flat.items()}, OUT / "tiny-ip-adapter.safetensors")
    (OUT / "tiny-config.json").write_text(json.dumps({"resampler": RESAMPLER}, indent=1))


def set_image_proj_model(self, model_ckpt, image_emb_dim=512, num_tokens=16):
    """Stand-in for the official method with the tiny Resampler's dims (the rest as the official one)."""
    args = {**RESAMPLER, "num_queries": num_tokens, "embedding_dim": image_emb_dim,
            "output_dim": self.unet.config.cross_attention_dim}
    image_proj_model = Resampler(**args)
    image_proj_model.eval()
    self.image_proj_model = image_proj_model.to(self.device, dtype=self.dtype)
    state_dict = torch.load(model_ckpt, map_location="cpu")
    if "image_proj" in state_dict:
        state_dict = state_dict["image_proj"]
    self.image_proj_model.load_state_dict(state_dict)
    self.image_proj_model_in_features = image_emb_dim


def load_pipeline():
    official.StableDiffusionXLInstantIDPipeline.set_image_proj_model = set_image_proj_model
    net = ControlNetModel.from_pretrained(OUT / "tiny-identitynet")
    pipe = official.StableDiffusionXLInstantIDPipeline.from_pretrained(OUT / "tiny-sdxl", controlnet=net)
    from safetensors.torch import load_file

    flat = load_file(OUT / "tiny-ip-adapter.safetensors")
    state = {part: {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(part + ".")}
             for part in ("image_proj", "ip_adapter")}
    with tempfile.TemporaryDirectory() as tmp:  # the official loader reads an ip-adapter.bin
        torch.save(state, Path(tmp) / "ip-adapter.bin")
        pipe.load_ip_adapter_instantid(str(Path(tmp) / "ip-adapter.bin"))
    return pipe.to("cpu")


def observe(obj, name, record, key):
    """Wrap obj.name so that each call's result is kept under record[key] (a list), and returned unchanged."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        record.setdefault(key, []).append(out)
        return out

    setattr(obj, name, wrapper)


def record_case(pipe, name, *, pose_size, kps, seed, prompt, negative_prompt, steps, guidance_scale,
                identitynet_scale, ip_adapter_scale, max_side, min_side):
    folder = OUT / f"case-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = pose_size
    yy, xx = np.mgrid[:h, :w]  # a smooth synthetic frame (bilinear resizing of noise would be a poor test)
    pose = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    Image.fromarray(pose).save(folder / "pose.png")
    embedding = (rng.standard_normal(512) * 0.9).astype(np.float32)  # a raw ArcFace vector has norm ~20
    np.save(folder / "face_embedding.npy", embedding)
    # infer.py: the face image is resized, and the face analysed on the resized image
    image = resize_img(Image.open(folder / "pose.png").convert("RGB"), max_side=max_side, min_side=min_side)
    gen_kps = np.asarray(kps, np.float64) * [image.size[0] / w, image.size[1] / h]
    kps_image = official.draw_kps(image, gen_kps)
    noise = torch.randn(1, 4, image.size[1] // 8, image.size[0] // 8, generator=torch.Generator().manual_seed(seed))

    record: dict = {}
    observe(pipe, "encode_prompt", record, "prompt")
    observe(pipe, "_encode_prompt_image_emb", record, "face")
    observe(pipe, "_get_add_time_ids", record, "time_ids")
    observe(pipe, "prepare_latents", record, "latents")
    stages = {"kps_image": torch.from_numpy(np.asarray(kps_image).copy())}
    step = pipe.scheduler.step

    def scheduler_step(model_output, timestep, sample, *args, **kwargs):
        i = len([k for k in stages if k.startswith("noise_pred.")])
        stages[f"latent_in.{i}"] = sample.clone()
        stages[f"noise_pred.{i}"] = model_output.clone()  # after classifier-free guidance
        return step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = scheduler_step
    def on_step_end(pipeline, i, t, tensors):
        stages["latent"] = tensors["latents"].clone()  # after the last step: the final latent
        return {}

    try:
        result = pipe(
            prompt=prompt, negative_prompt=negative_prompt, image_embeds=embedding, image=kps_image,
            controlnet_conditioning_scale=identitynet_scale, ip_adapter_scale=ip_adapter_scale,
            num_inference_steps=steps, guidance_scale=guidance_scale, latents=noise, output_type="np",
            callback_on_step_end=on_step_end,
        ).images[0]
    finally:
        for attr in ("encode_prompt", "_encode_prompt_image_emb", "_get_add_time_ids", "prepare_latents"):
            delattr(pipe, attr)
        pipe.scheduler.step = step
    pe, npe, ppe, nppe = record["prompt"][0]
    face = record["face"][0]
    stages.update(
        prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe, negative_pooled_prompt_embeds=nppe,
        uncond_face_tokens=face[:1], face_tokens=face[1:], add_time_ids=record["time_ids"][0],
        timesteps=pipe.scheduler.timesteps.clone(), latents_init=record["latents"][0],
        image=torch.from_numpy((result * 255).round().astype(np.uint8)),
    )
    save_file({k: v.detach().clone().contiguous() for k, v in stages.items()}, folder / "stages.safetensors")
    spec = dict(prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale,
                identitynet_scale=identitynet_scale, ip_adapter_scale=ip_adapter_scale, seed=seed,
                max_side=max_side, min_side=min_side, face_kps=kps, pose="pose.png",
                face_embedding="face_embedding.npy", generation_size=list(image.size))
    (folder / "case.json").write_text(json.dumps(spec, indent=1))
    print(name, image.size, {k: tuple(v.shape) for k, v in stages.items() if "." not in k})


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    build_tiny()
    pipe = load_pipeline()
    N_PROMPT = "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, painting, drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, disfigured"  # noqa: E501 - infer.py's (first half)
    record_case(pipe, "square-30", pose_size=(96, 96), kps=[[30, 36], [64, 35.5], [47, 52], [33, 70], [62, 71.25]],
                seed=1, prompt="analog film photo of a man. faded film, desaturated, 35mm photo",
                negative_prompt=N_PROMPT, steps=30, guidance_scale=5.0, identitynet_scale=0.8, ip_adapter_scale=0.8,
                max_side=128, min_side=128)
    record_case(pipe, "wide-8", pose_size=(120, 72), kps=[[50, 20], [72, 21], [61, 33], [52, 47], [70, 46]],
                seed=2, prompt="a watercolor portrait of a woman in a garden", negative_prompt="blurry, dark",
                steps=8, guidance_scale=3.5, identitynet_scale=0.6, ip_adapter_scale=0.9, max_side=160, min_side=64)
