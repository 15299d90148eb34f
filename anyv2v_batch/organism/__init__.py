"""The model organism: tiny models trained here on the synthetic world (`anyv2v_batch.world`), shipped
with the package so that a first run sees an edit really propagate, offline and on a CPU.

- `i2vgen-xl-world/`: the I2VGen-XL architecture at a tiny size (UNet 1.9 M parameters, 32x32 frames),
  trained by `tools/organism/train_i2vgen_xl.py`; `--model` loads it like the real weights;
- `wan2.2-ti2v-world/`: the Wan2.2 TI2V architecture at a tiny size (DiT 2.1 M parameters, its VAE with
  48 latent channels, 128x128 frames), trained by `tools/organism/train_wan.py`; `--backbone wan2.2-ti2v
  --model` loads it like the real weights;
- `world-clip/`: a tiny CLIP trained contrastively on the world's frames and captions
  (`tools/organism/train_clip.py`), so that the scorer's CLIP scores mean something on the world;
  `--evaluate-model` loads it.

Weights are safetensors (the backbones' in float16, loaded in the dtype asked for); each folder's
`training.json` / `training.csv` says how it was trained.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AnyV2VError

HERE = Path(__file__).resolve().parent
I2VGEN_XL_WORLD = HERE / "i2vgen-xl-world"
WAN_WORLD = HERE / "wan2.2-ti2v-world"
WORLD_CLIP = HERE / "world-clip"
# what each folder must hold to load (a missing file is one line, before any work)
NEEDED = {
    "i2vgen-xl-world": ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json"),
    "wan2.2-ti2v-world": ("model_index.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json"),
    "world-clip": ("config.json", "model.safetensors"),
}


def organism_model(folder: Path) -> str:
    """The folder as a `--model` path, or a one-line error when its weights are missing from this install."""
    missing = [name for name in NEEDED[folder.name] if not (folder / name).is_file()]
    if missing:
        raise AnyV2VError(
            f"the model organism's {folder.name} is incomplete ({', '.join(missing)} missing under {folder}); "
            "reinstall anyv2v-batch, or train it with tools/organism/"
        )
    return str(folder)
