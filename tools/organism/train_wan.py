"""Train the model organism's Wan2.2 TI2V: the real architecture at a tiny size, on the synthetic world.

    python tools/organism/train_wan.py --out OUT [--vae-steps 2000] [--steps 3000] [--shapes 1] [--smoke]
    python tools/organism/train_wan.py --out OUT --resume --steps 5000   # the DiT on from its checkpoint

Writes a diffusers folder that `--backbone wan2.2-ti2v --model OUT` loads like the real weights
(transformer/, vae/, text_encoder/, tokenizer/, model_index.json), plus `OUT/training.csv` (step, stage,
loss, seconds). Frames are 128x128 (the Wan2.2 VAE compresses 16x16 pixels into one latent and the DiT
patches 2x2 latents: 4x4 tokens a latent frame), clips 9 frames (three latent frames: the first frame
alone, then four frames each). Two stages:

1. the VAE (`AutoencoderKLWan`, the Wan2.2 residual layout with its 2x2 patchify, 4x temporal
   compression and 48 latent channels, as the real one; narrow, the decoder twice the encoder's width)
   learns to reconstruct 9-frame world clips: the causal first-frame chunk, then two 4-frame chunks, the
   second reading the first's cache (trained on 5 frames only, the second chunk's colours drifted). It
   sees random 64x64 windows (`--crop`): a convolutional VAE sees the same scale at a quarter of the
   cost. Its `latents_mean` / `latents_std` are then set per channel from whole clips' latents, as the
   real VAE's tables normalise its latents for the flow;
2. the DiT (`WanTransformer3DModel`) learns the world's motion with the TI2V objective as our backbone
   samples it (`backbones/wan_ti2v.py`): rectified flow, x_s = (1 - s) x0 + s noise, velocity target
   noise - x0; the first latent frame is the clean image latent with timestep 0 on its tokens (pinned, as
   in sampling) and is left out of the loss; the caption replaced by the official negative prompt 10% of
   the time, so that guidance has the branch it pushes from. Clips are encoded once into a pool (the VAE
   is most of a step's cost otherwise); each step draws from it.

umT5 stays the tiny random encoder it starts as (frozen; a fixed random map still tells captions apart);
the tokenizer is word-level over the world's words. Deterministic on the CPU for a given thread count.
The encoded pool is kept in OUT/latent-pool.safetensors (not exported) for a resumed run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the checkout, for a run without installing
sys.path.insert(0, str(HERE))  # the trainers' shared parts

from organism_training import drop_rows, log_row, vae_loss  # noqa: E402

from anyv2v_batch import world  # noqa: E402

FRAMES, VAE_FRAMES, SIZE = 9, 9, 128  # the VAE on whole clips: a later chunk reads the one before's cache
Z = 48  # latent channels, as the real Wan2.2 VAE: 4x16x16 pixels (3072 values) into 48
VAE = {  # 0.70 M parameters
    "base_dim": 8,
    "decoder_base_dim": 16,  # the decoder wider, as the real one (256 against 160): sharp edges are its job
    "z_dim": Z,
    "dim_mult": [1, 2, 2, 2],  # three 2x downsamplings after the 2x2 patchify: 16x16 pixels a latent
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],  # 4 frames a latent after the first
    "latents_mean": [0.0] * Z,  # set after training, from the latents
    "latents_std": [1.0] * Z,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
}
TRANSFORMER = {  # 2.1 M parameters
    "patch_size": (1, 2, 2),
    "num_attention_heads": 7,
    "attention_head_dim": 32,  # width 224 > a token's 192 values (48 x 2 x 2)
    "in_channels": Z,
    "out_channels": Z,
    "text_dim": 32,
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 3,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}
UMT5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16}  # fmt: skip
TRAIN_SHIFT = 3.0  # noise levels drawn as the sampling grid's shift maps them, less skewed to pure noise


def world_words() -> list[str]:
    """Every word a world caption can hold (`world._caption`)."""
    words = ["a", "the", "camera", "pans", "over", "checkered", "and", ",", "moves", "move", "bounces", "bounce"]
    return words + ["around", *world.COLOURS, *world.KINDS, *world.DIRECTIONS]


def world_tokenizer():
    """A word-level fast tokenizer over the world's words, ending each prompt with </s> as umT5's does;
    any other word (the official negative prompt's) is <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(world_words())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def clips(seed: int, count: int, frames: int, shapes: int | None = None) -> list:
    return [
        world.make_clip(seed * 1000 + i, frames=frames, width=SIZE, height=SIZE, shapes=shapes) for i in range(count)
    ]


def to_video(batch: list) -> torch.Tensor:
    """Clips -> [B, 3, F, H, W] in [-1, 1], as `WanTI2V.encode_video` prepares frames."""
    x = torch.from_numpy(np.stack([c.frames for c in batch])).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0


def save_atomic(module, folder: Path, steps: int | None = None) -> None:
    """save_pretrained to a temporary folder, then renamed: a checkpoint is whole or absent (with
    `steps`, its step count beside it in trained_steps.json, what a resumed run goes on from)."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(tmp)
    if steps is not None:
        (tmp / "trained_steps.json").write_text(json.dumps({"steps": steps}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def crops(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B, 3, F, size, size], one random window a clip, its corner on the VAE's
    16-pixel latent grid."""
    if size >= x.shape[-1]:
        return x
    corners = rng.integers(0, (x.shape[-1] - size) // 16 + 1, (len(x), 2)) * 16
    return torch.stack([c[..., i : i + size, j : j + size] for c, (i, j) in zip(x, corners, strict=True)])


def train_vae(
    out: Path, steps: int, batch: int, log: Path, shapes: int | None, crop: int = SIZE, resume: bool = False
) -> None:
    """`steps` steps of the VAE on `crop`-pixel windows, from scratch or (`resume`) on from OUT/vae (its
    tables are set anew, from whole frames)."""
    from diffusers import AutoencoderKLWan

    done = 0
    if resume:
        vae = AutoencoderKLWan.from_pretrained(str(out / "vae")).train()
        done = 1 + max(int(r.split(",")[0]) for r in log.read_text().splitlines()[1:] if ",vae," in r)
    else:
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    started = time.perf_counter()
    for step in range(done, done + steps):
        x = crops(to_video(clips(step, batch, VAE_FRAMES, shapes)), crop, np.random.default_rng(step))
        loss = vae_loss(vae, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == done + steps - 1:
            log_row(log, [step, "vae", f"{loss.item():.5f}", f"{time.perf_counter() - started:.1f}"])
            print(f"vae {step}: {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    vae.eval()
    with torch.no_grad():  # per-channel tables from fresh clips: normalised latents are unit-variance
        mean = torch.cat([vae.encode(to_video(clips(10**6 + i, 4, FRAMES))).latent_dist.mode() for i in range(4)])
    channels = mean.transpose(0, 1).flatten(1)
    vae.register_to_config(
        latents_mean=[round(v, 5) for v in channels.mean(1).tolist()],
        latents_std=[round(v, 5) for v in channels.std(1).tolist()],
    )
    save_atomic(vae, out / "vae")


def write_text_parts(out: Path) -> None:
    """The tokenizer, a tiny random umT5 (seeded) and model_index.json: what the backbone loads beside."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = world_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    torch.manual_seed(3)
    UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **UMT5)).save_pretrained(out / "text_encoder")
    index = {"_class_name": "WanImageToVideoPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"]}  # fmt: skip
    (out / "model_index.json").write_text(json.dumps(index, indent=1) + "\n")


@torch.no_grad()
def latent_pool(backbone, count: int, shapes: int | None, cache: Path) -> tuple[torch.Tensor, list[str]]:
    """`count` world clips (seeds apart from every held-out draw) as the backbone encodes them:
    [count, Z, 3, 8, 8] normalised latents, and their captions. Kept in `cache` (a resumed run reads it
    back when it was made from the same VAE and draw)."""
    from safetensors.torch import load_file, save_file

    key = {"count": str(count), "shapes": str(shapes), "vae": str((cache.parent / "vae").stat().st_mtime_ns)}
    if cache.exists():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            meta = f.metadata()
        if {k: meta.get(k) for k in key} == key:
            return load_file(str(cache))["latents"], json.loads(meta["captions"])
    latents, captions = [], []
    for i in range(count):
        clip = world.make_clip(10**7 + i, frames=FRAMES, width=SIZE, height=SIZE, shapes=shapes)
        latents.append(backbone.encode_video(clip.frames)[0])
        captions.append(clip.caption)
    pool = torch.stack(latents)
    save_file({"latents": pool}, str(cache.with_suffix(".tmp")), metadata=key | {"captions": json.dumps(captions)})
    cache.with_suffix(".tmp").rename(cache)
    return pool, captions


def train_transformer(
    out: Path,
    steps: int,
    batch: int,
    pool_size: int,
    log: Path,
    lr: float,
    save_every: int,
    shapes: int | None,
    resume: bool = False,
) -> None:
    """`steps` steps of the DiT, anew or (`resume`) on from OUT/transformer's checkpoint (a fresh
    optimizer, warmed up again); the learning rate falls linearly to 0 over the run."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from anyv2v_batch.backbones.wan_ti2v import WanTI2V
    from anyv2v_batch.flow import shift_sigmas
    from anyv2v_batch.settings import WAN_NEGATIVE_PROMPT

    done = 0
    if resume:
        transformer = WanTransformer3DModel.from_pretrained(str(out / "transformer"))
        done = json.loads((out / "transformer" / "trained_steps.json").read_text())["steps"]
        drop_rows(log, "transformer", done)
    else:
        torch.manual_seed(1)
        transformer = WanTransformer3DModel(**TRANSFORMER)
    backbone = WanTI2V(
        transformer,
        AutoencoderKLWan.from_pretrained(str(out / "vae")),
        UMT5EncoderModel.from_pretrained(str(out / "text_encoder")).eval(),
        AutoTokenizer.from_pretrained(str(out / "tokenizer")),
    )
    transformer.train().requires_grad_(True)  # the backbone freezes what it is given
    started = time.perf_counter()
    pool, captions = latent_pool(backbone, pool_size, shapes, out / "latent-pool.safetensors")
    print(f"pool of {pool_size} clips encoded ({time.perf_counter() - started:.0f} s)", flush=True)
    contexts = {c: backbone.encode_prompts([c]) for c in sorted(set(captions)) + [WAN_NEGATIVE_PROMPT]}
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (1.0 - s / steps))
    rng = np.random.default_rng(2 + done)
    for run_step, step in enumerate(range(done, done + steps)):
        pick = rng.integers(0, pool_size, batch)
        drop = rng.random(batch) < 0.1
        x0 = pool[torch.from_numpy(pick)]
        context = torch.cat(
            [contexts[WAN_NEGATIVE_PROMPT if d else captions[i]] for i, d in zip(pick, drop, strict=True)]
        )
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        sigma = torch.from_numpy(shift_sigmas(rng.uniform(0.0, 1.0, batch), TRAIN_SHIFT).astype(np.float32))
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        noisy[:, :, :1] = x0[:, :, :1]  # the first latent frame is the clean image latent, as sampling pins it
        pred = transformer(
            noisy,
            timestep=backbone.token_timesteps(noisy, sigma * 1000),
            encoder_hidden_states=context,
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(pred[:, :, 1:], (noise - x0)[:, :, 1:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or run_step == steps - 1:
            log_row(log, [step, "transformer", f"{loss.item():.5f}", f"{time.perf_counter() - started:.1f}"])
            print(f"transformer {step}: {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
        if (step + 1) % save_every == 0 or run_step == steps - 1:
            save_atomic(transformer, out / "transformer", steps=step + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64, help="the VAE's training windows, pixels (multiple of 16)")
    parser.add_argument("--steps", type=int, default=3000, help="the transformer's")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pool", type=int, default=4000, help="world clips encoded for the transformer")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--shapes", type=int, default=None, help="clips of this many shapes (default 1 to 3)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-vae", action="store_true", help="keep OUT/vae (train only the transformer)")
    parser.add_argument("--resume-vae", action="store_true", help="the VAE on from OUT/vae, then the transformer anew")
    parser.add_argument("--resume", action="store_true", help="keep OUT/vae; the transformer on from its checkpoint")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each stage: the script works")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.vae_steps, args.steps, args.batch, args.pool, args.save_every = 2, 3, 2, 4, 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "training.csv"
    with (out / "commands.txt").open("a") as f:  # how the weights came to be, run by run (export keeps it)
        f.write(" ".join(["python", "tools/organism/" + Path(__file__).name, *sys.argv[1:]]) + "\n")
    if (args.resume_vae or args.skip_vae) and not args.resume:  # the transformer trains anew: its old rows go
        drop_rows(log, "transformer")
    if args.resume_vae:
        train_vae(out, args.vae_steps, args.vae_batch, log, args.shapes, args.crop, resume=True)
    elif not (args.skip_vae or args.resume):
        log.write_text("step,stage,loss,seconds\n")
        write_text_parts(out)
        train_vae(out, args.vae_steps, args.vae_batch, log, args.shapes, args.crop)
    if args.steps:  # --steps 0: the VAE alone (the transformer then with --skip-vae)
        train_transformer(
            out, args.steps, args.batch, args.pool, log, args.lr, args.save_every, args.shapes, resume=args.resume
        )


if __name__ == "__main__":
    main()
