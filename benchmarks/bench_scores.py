"""Scorer cost per clip, measured on a tiny CLIP and counted for the full-size one against the edit's.

    python benchmarks/bench_scores.py --threads 1            # both tables
    python benchmarks/bench_scores.py --threads 1 --cpu-forward   # also one real full-size ViT-L/14 forward

Table 1 (measured, this machine): seconds per clip of `Scorer.score` with a tiny random CLIP (what CI
runs), per geometry, wall and CPU seconds; the optical flow of motion fidelity (output and source:
OpenCV, CPU, weight-free, the same cost whatever the CLIP) on its own; and per clip when 4 variants of
one clip are scored in one `score_many` (the source's embeddings and flow computed once). The rest of
a score (frame resizing, the tiny CLIP, cosines) is the difference.

Table 2 (counted, no weights, no GPU needed): FLOPs of the full-size models on the meta device
(torch.utils.flop_counter: matmuls, convolutions, attention): CLIP ViT-L/14 (openai/clip-vit-large-patch14's
architecture) per image and per prompt, against the I2VGen-XL UNet per entry at the official 16 frames
of 512x512 (latents 16x64x64) times the UNet entries of one clip at the official defaults (500 DDIM
inversion steps without guidance, 50 sampling steps with 2 guidance branches plus the source branch
while it injects - this project's plan; the official code keeps the source branch for all 50 steps).
Images per clip: 16 output + 16 source + 1 edited first frame (33) for the first variant of a clip,
17 for each further variant (the source is shared), and 48 for one clip scored alone (three calls of
EMBED_BATCH=16 images, the last padded). The UNet count leaves out the VAE and the text and image
encoders of the edit, so the share of scoring is overstated, not understated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY_I2VGEN_XL = (
    Path(os.environ.get("ANYV2V_SHARED_FIXTURES") or ROOT.parent / "shared" / "fixtures")
    / "anyv2v-reference"
    / "tiny-i2vgen-xl"
)  # the shared recordings' tiny model (../shared/fixtures beside the checkout)
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def vit_l14_config(**overrides):
    """openai/clip-vit-large-patch14's architecture."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                           patch_size=14, image_size=224, hidden_act="quick_gelu"),
        projection_dim=768, **overrides,
    )  # fmt: skip


def tiny_clip_folder(folder: Path) -> Path:
    """A tiny random CLIPModel folder (the tiny I2VGen-XL fixture's CLIP tokenizer), as the tests build."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY_I2VGEN_XL / "tokenizer")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=30, patch_size=6, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": OPENAI_MEAN, "image_std": OPENAI_STD}))
    return folder


def synthetic_clip(frames: int, size: int, seed: int) -> np.ndarray:
    """A textured scene panning 2 px per frame (texture gives the flow something to follow)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (size // 8 + 8, size // 8 + frames, 3)).astype(np.uint8)
    from PIL import Image

    big = np.asarray(Image.fromarray(texture).resize((texture.shape[1] * 8, texture.shape[0] * 8), Image.BICUBIC))
    return np.stack([big[:size, 2 * f : 2 * f + size] for f in range(frames)])


def timed(repeats: int, work, *args) -> tuple[float, float]:
    """(wall, CPU) seconds per call: CPU time (all threads of this process) leaves out the waits of a
    machine shared with other work."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        work(*args)
    return (time.perf_counter() - w0) / repeats, (time.process_time() - c0) / repeats


def measure_tiny(geometries: list[tuple[int, int]], repeats: int) -> list[dict]:
    from anyv2v_batch.scores import Scorer, motion_fidelity

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scorer = Scorer(str(tiny_clip_folder(Path(tmp))))
        for frames, size in geometries:
            source = synthetic_clip(frames, size, seed=0)
            outputs = [np.ascontiguousarray(source[..., ::-1]) ^ np.uint8(v) for v in range(4)]
            scorer.score(outputs[0], source, outputs[0][0], "a robot")  # warm up
            whole = timed(repeats, scorer.score, outputs[0], source, outputs[0][0], "a robot")
            flow = timed(repeats, motion_fidelity, source, outputs[0])
            variants = [(o, source, o[0], "a robot") for o in outputs]
            many = timed(repeats, scorer.score_many, variants)
            rows.append(dict(geometry=f"{frames}x{size}x{size}", whole=whole, flow=flow,
                             amortised=(many[0] / len(variants), many[1] / len(variants))))  # fmt: skip
    return rows


def count_flops() -> dict:
    from dataclasses import replace

    from diffusers import I2VGenXLUNet
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPModel

    from anyv2v_batch.pnp_edit import plan_schedule
    from anyv2v_batch.schedule import Schedule
    from anyv2v_batch.settings import backbone_defaults

    def meta(*shape, dtype=torch.float16):
        return torch.empty(*shape, device="meta", dtype=dtype)

    with torch.device("meta"):
        unet = I2VGenXLUNet().half()  # the class defaults are the released model's configuration
        clip = CLIPModel(vit_l14_config())
    defaults = backbone_defaults("i2vgen-xl")
    frames, size = defaults["clip"].frames, defaults["clip"].width
    with FlopCounterMode(display=False) as counter:
        latents = meta(1, 4, frames, size // 8, size // 8)
        unet(latents, torch.tensor(500, device="meta"), encoder_hidden_states=meta(1, 77, 1024),
             fps=meta(1, dtype=torch.float32), image_latents=latents, image_embeddings=meta(1, 1, 1024),
             return_dict=False)  # fmt: skip
    unet_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        clip.get_image_features(pixel_values=meta(1, 3, 224, 224, dtype=torch.float32))
    image_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        clip.get_text_features(input_ids=torch.zeros(1, 77, dtype=torch.long, device="meta"))
    text_flops = counter.get_total_flops()

    inversion, edit = defaults["inversion"], replace(defaults["edit"], prompt="a robot")
    plan = plan_schedule(Schedule.from_model(str(TINY_I2VGEN_XL)), edit, inversion)
    inversion_entries = inversion.steps * (1 if inversion.guidance_scale == 1.0 else 2)
    edit_entries = sum(2 + (i <= plan.last_source_step) for i in range(len(plan.run)))
    return dict(frames=frames, size=size, unet=unet_flops, image=image_flops, text=text_flops,
                inversion_entries=inversion_entries, edit_entries=edit_entries,
                official_edit_entries=3 * len(plan.run))  # fmt: skip


def cpu_forward_seconds() -> tuple[float, int]:
    """One real forward of the full-size ViT-L/14 image tower (random weights) on this CPU, one image."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(vit_l14_config()).eval()
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        clip.get_image_features(pixel_values=pixels)  # warm up
        t0 = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            clip.get_image_features(pixel_values=pixels)
        return time.perf_counter() - t0, counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--geometry", nargs="+", default=["8x32", "16x512"], help="FRAMESxSIZE, square frames")
    p.add_argument("--cpu-forward", action="store_true", help="time one real full-size ViT-L/14 forward here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from anyv2v_batch.loading import quiet_libraries

    quiet_libraries()
    cpu = platform.processor() or platform.machine()
    print(
        f"# {cpu}; torch {torch.__version__}; {torch.get_num_threads()} torch threads; python {sys.version.split()[0]}"
    )

    print("\n## Measured: tiny random CLIP, CPU")
    print("| frames x size | s / clip (score), wall / CPU | of which optical flow, wall / CPU | "
          "s / clip, 4 variants of one clip in one score_many, wall / CPU |")  # fmt: skip
    print("|---|---|---|---|")
    geometries = [tuple(int(v) for v in g.split("x")) for g in args.geometry]
    for row in measure_tiny(geometries, args.repeats):
        cells = " | ".join(f"{row[k][0]:.3f} / {row[k][1]:.3f}" for k in ("whole", "flow", "amortised"))
        print(f"| {row['geometry']} | {cells} |", flush=True)

    f = count_flops()
    entries = f["inversion_entries"] + f["edit_entries"]
    job = f["unet"] * entries
    frames = f["frames"]
    print(f"\n## Counted: full-size FLOPs, official defaults ({frames} frames, {f['size']}x{f['size']})")
    print(f"CLIP ViT-L/14: {f['image'] / 1e9:.1f} GFLOP per image (224x224), {f['text'] / 1e9:.1f} GFLOP per prompt; "
          f"I2VGen-XL UNet: {f['unet'] / 1e12:.2f} TFLOP per entry; UNet entries per clip: "
          f"{f['inversion_entries']} inversion + {f['edit_entries']} edit = {entries} "
          f"(official code: {f['inversion_entries'] + f['official_edit_entries']})")  # fmt: skip
    print("\n| scoring | images | CLIP TFLOP / clip | edit TFLOP / clip (UNet only) | scoring / edit |")
    print("|---|---|---|---|---|")
    for label, images in [("first variant of a clip", 2 * frames + 1), ("further variant, same clip", frames + 1),
                          ("one clip scored alone (padded to 3 x 16)", 48)]:  # fmt: skip
        clip = images * f["image"] + f["text"]
        print(f"| {label} | {images} | {clip / 1e12:.2f} | {job / 1e12:.0f} | {100 * clip / job:.3f}% |")

    if args.cpu_forward:
        seconds, flops = cpu_forward_seconds()
        print(f"\nfull-size ViT-L/14, one image, real forward on this CPU: {seconds:.2f} s "
              f"({flops / 1e9:.1f} GFLOP counted, {flops / seconds / 1e9:.0f} GFLOP/s)")  # fmt: skip


if __name__ == "__main__":
    main()
