"""Run the official AnyV2V SEINE code (DDIM inversion + PnP edit with its DDPM sampler) on the tiny model;
record every stage, including the noise the DDPM sampler drew, so a port can replay it.
Usage: run_reference_seine_b.py MODEL CASE.json OUT   (env SEINE_REF = AnyV2V's seine/ folder)
Deviation, documented: the official scripts cast inputs to float16 in several places even with use_fp16
off; on the CPU in float32 those casts are made float32 (the source text is patched on load).
Copy of run_reference_seine.py (used for case_b.json) whose one change is that case.json also records
`cross_injected`, the timesteps at which cross-attention Q/K injection fired."""
import json, logging, os, sys, types, tempfile, shutil, glob
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import standins  # noqa: F401
REF = os.environ["SEINE_REF"]; sys.path.insert(0, REF); sys.path.insert(0, os.path.join(REF, "models"))
import numpy as np, torch
from PIL import Image
from omegaconf import OmegaConf
from safetensors.torch import save_file
import diffusers.schedulers.scheduling_ddpm as ddpm_module
torch.set_num_threads(1)  # fixed for byte-identical reruns (and two threads ran 100x slower on this machine)
from diffusers import DDIMScheduler

def load_patched(name):
    path = os.path.join(REF, f"{name}.py")
    mod = types.ModuleType(name); mod.__file__ = path
    exec(compile(open(path).read().replace("torch.float16", "torch.float32"), path, "exec"), mod.__dict__)
    mod.logger = logging.getLogger(name); mod.device = torch.device("cpu")
    return mod
inv, edit = load_patched("run_ddim_inversion"), load_patched("run_pnp_edit")

model_dir, case_path, out_dir = sys.argv[1:4]
case = json.load(open(case_path))
W, H, N = case["width"], case["height"], case["n_frames"]
work = tempfile.mkdtemp()
src_dir = f"{work}/data/src"  # the official layout: frames of <video>.mp4 live in <video>/00000.png ...
os.makedirs(src_dir); os.makedirs(f"{out_dir}/source", exist_ok=True)

def synth_video(n, W, H, seed):
    rng = np.random.default_rng(seed); yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([40 + 150 * xx / W, 60 + 120 * yy / H, 90 + 60 * (xx + yy) / (H + W)], -1)
    frames = []
    for i in range(n):
        f = base.copy(); x0 = 4 + i * 3; y0 = 10 + i * 2
        f[y0:y0 + 18, x0:x0 + 18] = [220, 40, 40]
        f[(yy - (H - 18 - i)) ** 2 + (xx - (W - 14 - 3 * i)) ** 2 < 60] = [30, 200, 60]
        f += rng.normal(0, 3, f.shape)
        frames.append(Image.fromarray(np.clip(f, 0, 255).astype(np.uint8)))
    return frames
for i, f in enumerate(synth_video(N, W, H, case["seed"])):
    f.save(f"{src_dir}/{i:05d}.png"); f.save(f"{out_dir}/source/{i:05d}.png")
first = np.array(Image.open(f"{src_dir}/00000.png")).astype(np.float32)
Image.fromarray(np.clip(first[..., [2, 0, 1]] * 0.8 + 30, 0, 255).astype(np.uint8)).save(f"{out_dir}/edited_first_frame.png")

common = dict(seed=case["seed"], device="cpu", debug=False, model_name="seine", image_size=[H, W], sd_path=model_dir,
    ckpt_path=f"{model_dir}/seine.pt", model_key=model_dir, enable_xformers_memory_efficient_attention=False,
    use_fp16=False, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", batch_size=1)
rec, calls = {}, []
def spy_unet(unet):
    orig = unet.forward
    def forward(sample, timestep, *a, **kw):
        calls.append((int(timestep), sample.detach().clone(), kw.get("encoder_hidden_states")))
        return orig(sample, timestep, *a, **kw)
    unet.forward = forward

# ---- inversion, as run_ddim_inversion.py's __main__ and main() do it
icfg = OmegaConf.create(dict(common, output_dir=f"{work}/ddim-inversion", src_video_path=src_dir, save_video_frames=False,
    n_steps=case["inversion_steps"], n_save_steps=case["n_save_steps"], n_frame_to_invert=N, inversion_prompt=case["inversion_prompt"]))
inv.config = icfg
inv.seed_everything(icfg.seed)
toy = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", beta_start=icfg.beta_start, beta_end=icfg.beta_end, beta_schedule=icfg.beta_schedule)
toy.set_timesteps(icfg.n_save_steps)
to_save, _ = inv.get_timesteps(toy, num_inference_steps=icfg.n_save_steps, strength=1.0)
save_path = os.path.join(icfg.output_dir, "seine", "src", f"steps_{icfg.n_steps}", f"nframes_{N}")
os.makedirs(f"{save_path}/ddim_latents")
inv.add_dict_to_yaml_file(file_path=f"{save_path}/inversion_prompts.yaml", key="src", value=icfg.inversion_prompt)
with torch.no_grad():
    ipipe = inv.SEINEDDIMInversionPipeline(inv.device, icfg)
    spy_unet(ipipe.unet)
    rec["video_latents_0"] = ipipe.latent_at_0.clone()
    ipipe.extract_ddim_latents(icfg, to_save, save_path)  # also runs the official reconstruction, unrecorded
rec["inversion/encoder_hidden_states"] = calls[0][2]
rec["inversion/unet_input_first"] = calls[0][1]  # [1, 9, F, h, w]: latent, mask, masked source video
saved = sorted(int(os.path.basename(p)[13:-3]) for p in glob.glob(f"{save_path}/ddim_latents/ddim_latents_*.pt"))
for t in saved:
    rec[f"inverted/{t}"] = torch.load(f"{save_path}/ddim_latents/ddim_latents_{t}.pt")
calls.clear()

# ---- PnP edit, as run_pnp_edit.py's __main__ and main() do it, with the DDPM noise recorded
ecfg = OmegaConf.create(dict(common, output_dir=f"{work}/out", data_dir=f"{work}/data", src_video_path=f"{work}/data/src.mp4",
    ddim_inversion_dir=icfg.output_dir, n_ddim_inversion_steps=icfg.n_steps, n_frame_inverted=N, n_frames=N,
    edited_first_frame_path=f"{out_dir}/edited_first_frame.png", sample_method="ddpm", cfg_scale=case["cfg_scale"],
    n_steps=case["steps"], init_with_ddim_inversion=True, prompt=case["prompt"], negative_prompt=case["negative_prompt"],
    enable_pnp=True, pnp_f_t=case["pnp_conv"], pnp_spatial_attn_t=case["pnp_spatial_attn"],
    pnp_temp_attn_t=case["pnp_temporal_attn"], pnp_cross_attn_t=case["pnp_cross_attn"]))
edit.config = ecfg
edit.seed_everything(ecfg.seed)
noises = []
orig_randn = ddpm_module.randn_tensor
def recording_randn(*a, **kw):
    x = orig_randn(*a, **kw); noises.append(x.clone()); return x
ddpm_module.randn_tensor = recording_randn
with torch.no_grad():
    epipe = edit.SEINEPnPPipeline(edit.device, ecfg)
    spy_unet(epipe.unet)
    orig_decode = epipe.decode_latents
    final = {}
    def decode_spy(latents):
        final["latents"] = latents.clone(); return orig_decode(latents)
    epipe.decode_latents = decode_spy
    epipe.scheduler.set_timesteps(ecfg.n_steps)
    epipe.init_pnp()
    frames = epipe.edit_video(ecfg)  # [1, F, H, W, 3] uint8
rec["edit/x_T"] = epipe.ddim_latents_at_T
rec["edit/encoder_hidden_states"] = calls[0][2]  # [inversion prompt, prompt, negative]
for i, (t, sample, _) in enumerate(calls):
    k = sample.shape[0] // 3
    rec[f"edit/unet_input/{i:03d}_t{t}"] = sample[k:2 * k]  # the conditional branch: [x, mask, masked edited video]
    rec[f"edit/source_input/{i:03d}_t{t}"] = sample[:k]    # the source branch: [inverted latent at t+1, mask, masked source]
for i, n in enumerate(noises):
    rec[f"edit/ddpm_noise/{i:03d}"] = n
rec["edit/final_latents"] = final["latents"]
rec["edit/decoded_video"] = frames
rec = {k: v.contiguous().float() if v.is_floating_point() else v.contiguous() for k, v in rec.items()}
save_file(rec, f"{out_dir}/reference.safetensors")
meta = dict(case, inversion_saved_timesteps=saved, edit_timesteps=[c[0] for c in calls],
    conv_injected=[int(t) for t in epipe.conv_injection_timesteps], spatial_injected=[int(t) for t in epipe.spatial_attn_qk_injection_timesteps],
    temporal_injected=[int(t) for t in epipe.temp_attn_qk_injection_timesteps],
    cross_injected=[int(t) for t in epipe.cross_attn_qk_injection_timesteps], x_T_from=max(saved),
    tensors={k: list(v.shape) for k, v in rec.items()})
json.dump(meta, open(f"{out_dir}/case.json", "w"), indent=1)
shutil.rmtree(work)
print("ok", len(rec), "tensors; edit timesteps", meta["edit_timesteps"], "x_T from", meta["x_T_from"], "noises", len(noises))
