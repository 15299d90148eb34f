"""Train the model organism's I2VGen-XL: the real architecture at a tiny size, on the synthetic world.

    python tools/organism/train_i2vgen_xl.py --out OUT [--vae-steps 1500] [--unet-steps 3000] [--smoke]

Writes a diffusers folder that `--model OUT` loads like the real weights (unet, vae, text and image
encoders, tokenizer, feature extractor, scheduler), plus `OUT/training.csv` (step, stage, loss,
seconds). Two stages:

1. the VAE (AutoencoderKL, 2x downsampling: 32x32 frames -> 4x16x16 latents) learns to reconstruct the
   world's frames (L1 + a small KL); its `scaling_factor` is then set to 1 / the latents' std, as the
   Stable Diffusion VAE's was, so that scaled latents have unit variance for the noise schedule;
2. the UNet (I2VGenXLUNet) learns the world's motion from a first frame and a caption, with I2VGen-XL's
   own objective: v-prediction on its zero-SNR cosine schedule (the scheduler config), conditioned as
   our backbone conditions it at inference (`I2VGenXL.condition`: the first frame's latent and the
   frame-position mask, the CLIP image embedding, the caption's text embedding, fps); the caption and
   image embedding dropped together 10% of the time, so that classifier-free guidance has an
   unconditional branch to push from.

The text and image encoders stay as the tiny random ones they start as (frozen: a fixed random
projection still tells captions and frames apart, and the UNet learns to read it). Every clip is a new
draw of the world (seeded by the step), so nothing is seen twice. Deterministic on the CPU for a given
thread count: the same command, the same weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the checkout, for a run without installing
sys.path.insert(0, str(HERE))  # the trainers' shared parts

from organism_training import drop_rows, log_row, vae_loss  # noqa: E402

from anyv2v_batch.world import make_clip  # noqa: E402

FRAMES, SIZE, FPS = 8, 32, 8.0

UNET = {  # 1.9 M parameters: 7.6 MB in float32, within the tracked tree's budget
    "block_out_channels": [32, 32, 32, 32],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,  # as the real UNet: AnyV2V injects at up-block layer 2
    "norm_num_groups": 8,
    "num_attention_heads": 4,
    "attention_head_dim": 8,
    "sample_size": 16,
}
VAE = {
    "act_fn": "silu",
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": SIZE,
    "scaling_factor": 1.0,  # set after training, from the latents' std
    "force_upcast": True,
}
# the encoders, tokenizer, feature extractor and scheduler config start from the project's tiny I2VGen-XL
STARTER = ("text_encoder", "image_encoder", "tokenizer", "feature_extractor", "scheduler")


def clips(seed: int, count: int, shapes: int | None = None) -> list:
    return [make_clip(seed * 1000 + i, frames=FRAMES, width=SIZE, height=SIZE, shapes=shapes) for i in range(count)]


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(out: Path, steps: int, batch: int, log: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    started = time.perf_counter()
    for step in range(steps):
        frames = np.concatenate([c.frames[[0, FRAMES - 1]] for c in clips(step, batch // 2)])
        x = to_pixels(frames)
        loss = vae_loss(vae, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log_row(log, [step, "vae", f"{loss.item():.5f}", f"{time.perf_counter() - started:.1f}"])
            print(f"vae {step}: {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():  # the latents' spread over fresh clips sets the scaling factor
        x = to_pixels(np.concatenate([c.frames for c in clips(10**6, 32)]))
        std = vae.encode(x).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.save_pretrained(out / "vae")
    print(f"vae latent std {std:.4f} -> scaling_factor {1.0 / std:.4f}", flush=True)


def conditioning(backbone, batch: list, drop: np.ndarray) -> dict[str, torch.Tensor]:
    """The UNet keywords for each clip, as the backbone computes them at inference (dropped entries: an
    empty caption and a zero image embedding, as the negative branch)."""
    from anyv2v_batch.backbones.base import Branch

    branches = [
        Branch("" if d else c.caption, c.frames[0], image_embedding=not d) for c, d in zip(batch, drop, strict=True)
    ]
    cond = backbone.condition(branches, FRAMES, FPS)
    return {k: v.clone() for k, v in cond.items()}  # out of inference mode: usable in autograd


def train_unet(
    out: Path,
    steps: int,
    batch: int,
    log: Path,
    lr: float,
    save_every: int,
    resume: bool = False,
    decay: bool = False,
    shapes: int | None = None,
) -> None:
    """`steps` more steps; `resume`: from OUT/unet's checkpoint (a fresh optimizer, warmed up again);
    `decay`: the learning rate falls linearly to 0 over this run (a last run settles the noisy end)."""
    from diffusers import DDPMScheduler, I2VGenXLUNet
    from safetensors.torch import save_file

    from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL

    torch.manual_seed(1)
    unet = I2VGenXLUNet(**UNET)
    done = 0
    if resume and (out / "unet" / "trained_steps.json").exists():  # on from the last checkpoint
        from safetensors.torch import load_file

        unet.load_state_dict(load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors")))
        done = json.loads((out / "unet" / "trained_steps.json").read_text())["steps"]
        drop_rows(log, "unet", done)
    else:
        unet.save_pretrained(out / "unet")  # the folder loads (random UNet) while training runs
        drop_rows(log, "unet")  # an earlier UNet's rows go
    backbone = I2VGenXL.from_pretrained(str(out), device="cpu", dtype="float32")
    backbone.unet = unet
    noise_schedule = DDPMScheduler.from_pretrained(str(out), subfolder="scheduler")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10 + 1)

    def factor(s: int) -> float:  # counts this run's steps
        return min(1.0, (s + 1) / warmup) * ((1.0 - s / steps) if decay else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng = np.random.default_rng(2 + done)
    started = time.perf_counter()
    for step in range(done, done + steps):
        batch_clips = clips(10**7 + step, batch, shapes)
        drop = rng.random(batch) < 0.1
        with torch.no_grad():
            x0 = torch.cat([backbone.encode_video(c.frames) for c in batch_clips]).clone()  # [B, C, F, h, w]
            cond = conditioning(backbone, batch_clips, drop)
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        t = torch.from_numpy(rng.integers(0, noise_schedule.config.num_train_timesteps, batch))
        noisy = noise_schedule.add_noise(x0, noise, t)
        target = noise_schedule.get_velocity(x0, noise, t)
        pred = unet(
            noisy,
            t,
            encoder_hidden_states=cond["encoder_hidden_states"],
            fps=cond["fps"],
            image_latents=cond["image_latents"],
            image_embeddings=cond["image_embeddings"],
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == done + steps - 1:
            log_row(log, [step, "unet", f"{loss.item():.5f}", f"{time.perf_counter() - started:.1f}"])
            print(f"unet {step}: {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
        if (step + 1) % save_every == 0 or step == done + steps - 1:
            tmp = out / "unet" / "diffusion_pytorch_model.safetensors.tmp"
            save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp))
            tmp.replace(out / "unet" / "diffusion_pytorch_model.safetensors")  # a checkpoint is whole or absent
            (out / "unet" / "trained_steps.json").write_text(json.dumps({"steps": step + 1}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--starter", type=Path, default=None, help="the tiny I2VGen-XL folder to start from")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-vae", action="store_true", help="keep OUT/vae (train only the UNet)")
    parser.add_argument("--resume", action="store_true", help="keep OUT/vae; the UNet on from its checkpoint")
    parser.add_argument("--decay", action="store_true", help="the learning rate falls linearly to 0 over the run")
    parser.add_argument("--shapes", type=int, default=None, help="UNet clips of this many shapes (default 1 to 3)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each stage: the script works")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.vae_steps, args.unet_steps, args.batch, args.save_every = 3, 3, 2, 2
    starter = args.starter or HERE.parents[2] / "shared" / "fixtures" / "anyv2v-reference" / "tiny-i2vgen-xl"
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for part in STARTER:
        if not (out / part).exists():
            shutil.copytree(starter / part, out / part)
    index = json.loads((starter / "model_index.json").read_text())
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
    log = out / "training.csv"
    with (out / "commands.txt").open("a") as f:  # how the weights came to be, run by run (export keeps it)
        f.write(" ".join(["python", "tools/organism/" + Path(__file__).name, *sys.argv[1:]]) + "\n")
    if not (args.skip_vae or args.resume):
        log.write_text("step,stage,loss,seconds\n")
        train_vae(out, args.vae_steps, max(2, args.batch * 2), log)
    train_unet(
        out,
        args.unet_steps,
        args.batch,
        log,
        args.lr,
        args.save_every,
        resume=args.resume,
        decay=args.decay,
        shapes=args.shapes,
    )


if __name__ == "__main__":
    main()
