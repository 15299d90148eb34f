"""Engine speed per backbone: seconds, peak memory and UNet evaluations for inversion and edit.

CPU, the tiny fixture models of all three backbones (what CI machines can run):
    python benchmarks/bench_engine.py --threads 1 --inversion-steps 100

GPU, the full-size architectures with random weights (speed does not depend on the values), each
backbone at its official defaults (I2VGen-XL 512x512x16, ConsistI2V 256x256x16, SEINE 512x512x16;
500 inversion steps, 50 sampling steps, each backbone's guidance, start step and saved-latent grid),
float16:
    python benchmarks/bench_engine.py --full-size --device cuda --backbone all --inversion-steps 500 \\
        --dtypes float16 --batches 1
I2VGen-XL alone in float16 and bfloat16, 1-4 clips per UNet call, with and without torch.compile:
    python benchmarks/bench_engine.py --full-size --device cuda --backbone i2vgen-xl --inversion-steps 500 \\
        --dtypes float16 bfloat16 --batches 1 2 3 4 --compile both
(`bash benchmarks/gpu.sh` runs every GPU table.)

The GPU code path on a CPU, end to end, in minutes: `--smoke` builds the same full-size random-weight
models but runs them at 64x64 (16 frames for ConsistI2V, whose UNet bakes in its frame count; 4 for
the others), 10 inversion and 5 sampling steps, one clip per call. `--check-full-size` builds the
full-size models on the meta device (no memory, no compute) and compares every state-dict shape with
the published models' manifests (tests/fixtures/*-reference/MANIFEST-full.json).

--backbone is repeatable (or "all", the default). Geometry: each backbone's official size and frame
count with --full-size, the tiny model's own otherwise (I2VGen-XL and ConsistI2V 32x32x8: ConsistI2V's
tiny UNet runs exactly 8 frames; SEINE 64x64x8: its tiny VAE downsamples 8x); --size / --frames
override for every backbone. Settings: each backbone's `backbone_defaults` with the step counts given;
ConsistI2V's start (index 4 of 50 sampling steps: t = 901) is kept as a timestep, i.e. the index of the
first step at or below it (0 at 10 steps).

Prints one row per configuration. Per clip: seconds of inversion, seconds of sampling from the stored
inversion (conditioning and decode included), their sum (the whole edit), seconds per inversion step
and per sampling step that runs ("sampling steps": run / scheduled, ConsistI2V skips its first 4);
the UNet alone: mean seconds per UNet call during inversion and during the edit (an edit call carries
[source, negative, editing], the source dropped after the last injecting step); "UNet entries" sums
the batch sizes of every UNet call per clip (a call on [source, negative, editing] counts 3); peak
memory during the row (GPU: max allocated; CPU: the process's peak resident set, reset before each
row where Linux allows it, so it includes the model and the Python/torch runtime). SEINE's one-off
blank-frame latent (a float64 VAE pass per frame size) is computed before the timing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
# the shared recordings (tiny models, configs, manifests): $ANYV2V_SHARED_FIXTURES, ../shared/fixtures beside the
# checkout, or a copy carried to a GPU machine in .shared/fixtures (benchmarks/gpu.sh says how)
FIXTURES = next(
    (p for p in (Path(os.environ.get("ANYV2V_SHARED_FIXTURES", "/nonexistent")), ROOT.parent / "shared" / "fixtures",
                 ROOT / ".shared" / "fixtures") if (p / "anyv2v-reference").is_dir()),
    ROOT.parent / "shared" / "fixtures",
)  # fmt: skip
TINY = {
    "i2vgen-xl": FIXTURES / "anyv2v-reference" / "tiny-i2vgen-xl",
    "consisti2v": FIXTURES / "consisti2v-reference" / "tiny-consisti2v",
    "seine": FIXTURES / "seine-reference" / "tiny-seine",
}
MANIFESTS = {
    "consisti2v": FIXTURES / "consisti2v-reference" / "MANIFEST-full.json",
    "seine": FIXTURES / "seine-reference" / "MANIFEST-full.json",
}
UNETS = tuple(TINY)  # "all"
BACKBONES = (*UNETS, "wan2.2-ti2v")
TINY_GEOMETRY = {"i2vgen-xl": (8, 32), "consisti2v": (8, 32), "seine": (8, 64), "wan2.2-ti2v": (9, 64)}
SMOKE_GEOMETRY = {"i2vgen-xl": (4, 64), "consisti2v": (16, 64), "seine": (4, 64), "wan2.2-ti2v": (5, 64)}
CLIP_PREPROCESS = {"crop_size": {"height": 224, "width": 224}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip


# ---- full-size models with random weights, built without any download


def sd_vae(sample_size: int):
    """The Stable Diffusion VAE (SD-1.x and SD-2.x share it: 83.7 M parameters)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
        scaling_factor=0.18215,
    )


def clip_text(**config):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **config))


def tiny_tokenizer(name: str):
    """The tiny fixture's tokenizer: ids only (speed does not depend on them); pads to 77 like the real ones."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY[name] / "tokenizer")
    tokenizer.model_max_length = 77
    return tokenizer


def scheduler_config(name: str) -> dict:
    # the fixtures hold the real scheduler configs (SEINE: SD-1.4's; the backbone overrides its betas)
    return json.loads((TINY[name] / "scheduler" / "scheduler_config.json").read_text())


def vae_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype != torch.float32 else dtype  # the SD VAE's force_upcast, as from_pretrained


def i2vgen_xl_modules(device: str) -> tuple:
    """I2VGen-XL's (unet, vae, text encoder, image encoder) at their real sizes (UNet 320/640/1280/1280,
    cross-attention 1024; OpenCLIP ViT-H text and vision towers; the SD VAE), random weights, float32, built
    with whichever diffusers and transformers are imported (ours, or the official code's pins:
    bench_official_i2vgen_xl.py)."""
    from diffusers import I2VGenXLUNet
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        unet = I2VGenXLUNet()  # the class defaults are the released model's configuration
        vae = sd_vae(512)
        text = clip_text(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                         projection_dim=1024, hidden_act="gelu")  # fmt: skip
        vision = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu",
            )
        )  # fmt: skip
    return unet, vae, text, vision


def full_size_i2vgen_xl(device: str, dtype: torch.dtype):
    """I2VGen-XL at its real sizes with random weights (`i2vgen_xl_modules`), as our backbone."""
    from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL

    unet, vae, text, vision = i2vgen_xl_modules(device)
    return I2VGenXL(unet.to(dtype), vae.float(), text.to(dtype), tiny_tokenizer("i2vgen-xl"), vision.to(dtype),
                    CLIP_PREPROCESS, scheduler_config("i2vgen-xl"), vae_dtype=torch.float32)  # fmt: skip


def full_size_consisti2v(device: str, dtype: torch.dtype):
    """ConsistI2V at its real sizes: the VideoLDM UNet (1.25 G parameters, 16 frames), SD-2.1-base's VAE
    and text encoder (OpenCLIP ViT-H/14 text tower cut to 23 layers, as SD-2.x uses its penultimate
    layer), random weights."""
    from anyv2v_batch.backbones.consisti2v import ConsistI2V
    from anyv2v_batch.backbones.consisti2v_unet import CONSISTI2V_FULL_CONFIG, ConsistI2VUNet

    torch.manual_seed(0)
    vd = vae_dtype_for(dtype)
    with torch.device(device):
        unet = ConsistI2VUNet.from_config(CONSISTI2V_FULL_CONFIG)
        vae = sd_vae(768)
        text = clip_text(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                         projection_dim=512, hidden_act="gelu")  # fmt: skip
    return ConsistI2V(unet.to(dtype), vae.to(vd), text.to(dtype), tiny_tokenizer("consisti2v"),
                      scheduler_config("consisti2v"), vae_dtype=vd)  # fmt: skip


def full_size_seine(device: str, dtype: torch.dtype):
    """SEINE at its real sizes: SD-1.4's UNet inflated to 3D with 9 input channels (909 M parameters),
    SD-1.4's VAE and CLIP ViT-L/14 text encoder, random weights."""
    from anyv2v_batch.backbones.seine import SEINE
    from anyv2v_batch.backbones.seine_unet import SD14_UNET_CONFIG_2D, SEINEUNet

    torch.manual_seed(0)
    vd = vae_dtype_for(dtype)
    with torch.device(device):
        unet = SEINEUNet.from_config_2d(SD14_UNET_CONFIG_2D)
        vae = sd_vae(512)
        text = clip_text(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         projection_dim=768, hidden_act="quick_gelu")  # fmt: skip
    return SEINE(unet.to(dtype), vae.to(vd), text.to(dtype), tiny_tokenizer("seine"), scheduler_config("seine"),
                 vae_dtype=vd)  # fmt: skip


def full_size_wan(device: str, dtype: torch.dtype):
    """Wan2.2-TI2V-5B at its real sizes (the 5.0 B transformer, the Wan2.2 VAE, umT5-XXL's encoder) with
    random weights; the configs are tests/test_manifests.py's (checked there against the official code)."""
    import sys

    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from anyv2v_batch.backbones.wan_ti2v import WanTI2V

    sys.path.insert(0, str(ROOT / "tests"))
    from test_manifests import WAN_TRANSFORMER_CONFIG, WAN_VAE_CONFIG
    from wan_tiny import tiny_tokenizer

    with torch.device(device):
        transformer = WanTransformer3DModel(**WAN_TRANSFORMER_CONFIG).to(dtype)
        vae = AutoencoderKLWan(**WAN_VAE_CONFIG)
        text = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                           num_heads=64, feed_forward_proj="gated-gelu")).to(dtype)  # fmt: skip
    return WanTI2V(transformer, vae, text.eval(), tiny_tokenizer(), device, dtype)


def wan_tiny_folder() -> Path:
    """The tiny recorded Wan model as a loadable folder (built once per process from tests/fixtures)."""
    import sys
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from wan_tiny import build_tiny_wan_folder

    return build_tiny_wan_folder(Path(tempfile.mkdtemp()) / "tiny-wan")


FULL_SIZE = {"i2vgen-xl": full_size_i2vgen_xl, "consisti2v": full_size_consisti2v, "seine": full_size_seine,
             "wan2.2-ti2v": full_size_wan}  # fmt: skip


def full_size_backbone(name: str, device: str, dtype: torch.dtype):
    return FULL_SIZE[name](device, dtype)


def check_full_size(names: list[str]) -> None:
    """Build each full-size model on the meta device and compare its state dicts with the manifests."""

    # names only: current transformers drop CLIPTextModel's `text_model.` prefix, current diffusers
    # renamed the VAE's attention (both load the old names)
    renames = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}

    def normalise(key: str) -> str:
        key = key.removeprefix("text_model.")
        for a, b in renames.items():
            key = key.replace(a, b)
        return key

    def compare(module: torch.nn.Module, manifest: dict | None) -> str:
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        count = f"{len(ours)} tensors, {sum(int(np.prod(s)) for s in ours.values()) / 1e6:.1f} M values"
        if manifest is None:
            return f"{count} | no manifest"
        theirs = {normalise(k): v for k, v in (manifest.get("keys") or manifest["shapes"]).items()}
        ours = {normalise(k): v for k, v in ours.items()}
        # transformers < 4.31 kept `position_ids` as a persistent buffer; it holds no weights
        missing = [k for k in theirs if k not in ours and not k.endswith("position_ids")]
        extra = [k for k in ours if k not in theirs]
        wrong = [k for k in ours if k in theirs and ours[k] != theirs[k]]
        if not (missing or extra or wrong):
            return f"{count} | every shape as published ({len(theirs)} tensors)"
        return f"{count} | MISMATCH: missing {missing[:3]}, extra {extra[:3]}, shapes {wrong[:3]}"

    print("| backbone | component | ours | against the published model |")
    print("|---|---|---|---|")
    for name in names:
        backbone = full_size_backbone(name, "meta", torch.float16)
        manifest = json.loads(MANIFESTS[name].read_text()) if name in MANIFESTS else None
        parts = {"unet": backbone.unet, "vae": backbone.vae, "text_encoder": backbone.text_encoder}
        if name == "i2vgen-xl":
            parts["image_encoder"] = backbone.image_encoder
        for part, module in parts.items():
            entry = None if manifest is None else manifest.get(part) or manifest.get(f"{part}_ema")
            print(f"| {name} | {part} | {compare(module, entry)} |", flush=True)


# ---- measuring


class PredictMeter:
    """Counts and times the backbone's UNet evaluations (wraps `backbone.predict`, outside any compiled
    region; synchronises the GPU around each call)."""

    def __init__(self, backbone, cuda: bool):
        self.calls = self.entries = 0
        self.seconds = 0.0
        method = "velocity" if backbone.flow else "predict"  # the DiT's loops call `velocity`
        inner = getattr(backbone, method)

        def predict(latents, t, cond):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = inner(latents, t, cond)
            if cuda:
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            self.entries += latents.shape[0]
            return out

        setattr(backbone, method, predict)

    def snapshot(self) -> tuple[int, int, float]:
        return self.calls, self.entries, self.seconds


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux >= 4.0: "5" resets the peak resident set size (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak is the process's since it started


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 2**20
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def synthetic_clip(frames: int, size: int, seed: int, height: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    height = height or size
    yy, xx = np.mgrid[0:height, 0:size]
    base = np.stack([xx * 200 / size, yy * 200 / height, 0 * xx + 120], -1)
    return np.stack([np.clip(base + rng.normal(0, 8, base.shape), 0, 255) for _ in range(frames)]).astype(np.uint8)


def start_index(backbone, official, steps: int) -> int:
    """The official start as a timestep: the first step of a `steps`-step schedule at or below it."""
    from anyv2v_batch.schedule import set_schedule

    if official.init_step == 0:
        return 0
    t0 = set_schedule(backbone.scheduler(), official.steps, "--steps")[official.init_step]
    timesteps = set_schedule(backbone.scheduler(), steps, "--steps")
    return next((i for i, t in enumerate(timesteps) if t <= t0), len(timesteps) - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", action="extend", nargs="+", choices=[*BACKBONES, "all"],
                   help="repeatable; 'all' (default): every backbone")  # fmt: skip
    p.add_argument("--full-size", action="store_true", help="full-size random-weight models")
    p.add_argument("--smoke", action="store_true", help="the full-size code path, shrunk to run on a CPU in minutes")
    p.add_argument("--check-full-size", action="store_true", help="build full size on meta, compare with manifests")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"])
    p.add_argument("--frames", type=int, default=None, help="default: per backbone (see above)")
    p.add_argument("--size", type=int, default=None, help="width (and height) (default: per backbone, see above)")
    p.add_argument("--height", type=int, default=None, help="a height other than --size (wan2.2-ti2v: 704, 480)")
    p.add_argument("--inversion-steps", type=int, nargs="+", default=None, help="default: 100 500 (smoke: 10)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 10 for 100, else 50; smoke: 5)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="clips per UNet call (default: 1 2; smoke: 1)")
    p.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here (a list of objects)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = set(args.backbone or ["all"])
    names = [n for n in BACKBONES if n in chosen or ("all" in chosen and n in UNETS)]

    from anyv2v_batch import EditSettings, load_backbone
    from anyv2v_batch.inversion import invert_batch
    from anyv2v_batch.loading import quiet_libraries
    from anyv2v_batch.pnp_edit import EditRequest, check_inversion_serves, edit_batch, plan_sampling
    from anyv2v_batch.settings import backbone_defaults

    quiet_libraries()
    if args.check_full_size:
        check_full_size(names)
        return
    full = args.full_size or args.smoke
    inversion_steps = args.inversion_steps or ([10] if args.smoke else [100, 500])
    batches = args.batches or ([1] if args.smoke else [1, 2])
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu")
    kind = "full size, random weights" + (" (smoke: shrunk geometry and steps)" if args.smoke else "")
    print(f"# {kind if full else 'tiny fixture models'}; {args.device} ({device_name}); torch {torch.__version__}; "
          f"{torch.get_num_threads()} CPU threads")  # fmt: skip
    print("| backbone | frames x size | dtype | compile | clips / call | inversion steps | sampling steps | "
          "inversion s / clip | sampling s / clip | whole edit s / clip | s / inversion step | s / sampling step | "
          "UNet s / inversion call | UNet s / edit call | UNet entries / clip | peak memory GiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    compiles = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    rows: list[dict] = []
    for name in names:
        defaults = backbone_defaults(name)
        if args.smoke:
            frames, size = SMOKE_GEOMETRY[name]
        elif full:
            frames, size = defaults["clip"].frames, defaults["clip"].width
        else:
            frames, size = TINY_GEOMETRY[name]
        frames, size = args.frames or frames, args.size or size
        height = args.height or (defaults["clip"].height if full and not args.smoke and not args.size else size)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for compiled in compiles:
                if full:
                    backbone = full_size_backbone(name, args.device, dtype)
                else:
                    folder = wan_tiny_folder() if name == "wan2.2-ti2v" else TINY[name]
                    backbone = load_backbone(name, str(folder), device=args.device, dtype=dtype)
                if compiled:
                    backbone.compile()
                meter = PredictMeter(backbone, cuda)
                if hasattr(backbone, "blank_latent"):  # SEINE: once per frame size, for the process's life
                    backbone.blank_latent(size, size)
                for inv_steps in inversion_steps:
                    steps = args.steps or (5 if args.smoke else 10 if inv_steps == 100 else 50)
                    inv_settings = replace(defaults["inversion"], steps=inv_steps)
                    settings = replace(defaults["edit"], prompt="a robot", steps=steps,
                                       init_step=start_index(backbone, defaults["edit"], steps))  # fmt: skip
                    plan = plan_sampling(backbone, settings, inv_settings)
                    check_inversion_serves(inv_settings, plan.needed, backbone.schedule)
                    ran = len(plan.run)
                    for batch in batches:
                        clips = [synthetic_clip(frames, size, seed, height) for seed in range(batch)]
                        if compiled:  # compile outside the timing
                            warm_inv = replace(defaults["inversion"], steps=2)
                            inv = invert_batch(backbone, clips, warm_inv, fps=8)
                            warm = (
                                replace(defaults["edit"], prompt="a robot", steps=2)
                                if backbone.flow
                                else EditSettings(
                                    prompt="a robot", steps=2, pnp_conv=0.5, pnp_spatial=0.5, pnp_temporal=0.5
                                )
                            )
                            edit_batch(backbone, [EditRequest(i, c[0], warm) for i, c in zip(inv, clips, strict=True)])
                        if cuda:
                            torch.cuda.synchronize()
                        reset_peak_memory(args.device)
                        m0, t0 = meter.snapshot(), time.perf_counter()
                        inversions = invert_batch(backbone, clips, inv_settings, fps=8, keep=plan.needed)
                        if cuda:
                            torch.cuda.synchronize()
                        m1, t1 = meter.snapshot(), time.perf_counter()
                        requests = [EditRequest(i, c[0], settings) for i, c in zip(inversions, clips, strict=True)]
                        results = edit_batch(backbone, requests)
                        if cuda:
                            torch.cuda.synchronize()
                        m2, t2 = meter.snapshot(), time.perf_counter()
                        assert all(r.frames.shape == clips[0].shape for r in results)
                        inv_s, samp_s = (t1 - t0) / batch, (t2 - t1) / batch
                        unet_inv = (m1[2] - m0[2]) / max(m1[0] - m0[0], 1)
                        unet_edit = (m2[2] - m1[2]) / max(m2[0] - m1[0], 1)
                        print(f"| {name} | {frames}x{size}x{height} | {dtype_name} | {'yes' if compiled else 'no'} | "
                              f"{batch} | {inv_steps} | {ran}/{steps} | {inv_s:.2f} | {samp_s:.2f} | "
                              f"{inv_s + samp_s:.2f} | {(t1 - t0) / inv_steps:.4f} | {(t2 - t1) / ran:.4f} | "
                              f"{unet_inv:.4f} | {unet_edit:.4f} | {(m2[1] - m0[1]) / batch:.0f} | "
                              f"{peak_memory_gib(args.device):.2f} |", flush=True)  # fmt: skip
                        rows.append({"backbone": name, "frames": frames, "width": size, "height": height,
                                     "dtype": dtype_name, "compile": compiled, "clips_per_call": batch,
                                     "inversion_steps": inv_steps, "steps": steps, "inversion_s": inv_s,
                                     "sampling_s": samp_s, "whole_s": inv_s + samp_s, "device": device_name,
                                     "torch": torch.__version__, "peak_gib": peak_memory_gib(args.device)})  # fmt: skip
                        if args.json:
                            args.json.write_text(json.dumps(rows, indent=1))
                del backbone, meter
                gc.collect()  # the meter's wrapper and the backbone refer to each other
                if cuda:
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
