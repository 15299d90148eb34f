"""The full-size Wan2.2-TI2V-5B transformer and VAE, built by the official code (Wan-Video/Wan2.2 @ 42bf4cf)
on the meta device: every state-dict key and shape, for tests/test_manifests.py (no weights needed).

The transformer's arguments are wan/configs/wan_ti2v_5B.py's (dim 3072, ffn 14336, 24 heads, 30 layers,
freq_dim 256, qk_norm, cross_attn_norm, eps 1e-6) with model_type "ti2v", 48 latent channels in and out
and umT5-XXL's 4096-wide text (text_len 512); the VAE's are Wan2_2_VAE's defaults (c_dim 160, z_dim 48,
dim_mult [1, 2, 4, 4], temporal downsample [False, True, True]) with `_video_vae`'s num_res_blocks 2 and
WanVAE_'s decoder width 256.

    WAN_REF=/path/to/Wan2.2 /tmp/wanenv/bin/python tools/reference/wan/build_manifest_wan.py \
        tests/fixtures/wan-ti2v-reference/MANIFEST-full.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run_official_wan_ti2v import import_official  # noqa: E402

TRANSFORMER = dict(
    model_type="ti2v",
    patch_size=(1, 2, 2),
    text_len=512,
    in_dim=48,
    dim=3072,
    ffn_dim=14336,
    freq_dim=256,
    text_dim=4096,
    out_dim=48,
    num_heads=24,
    num_layers=30,
    window_size=(-1, -1),
    qk_norm=True,
    cross_attn_norm=True,
    eps=1e-6,
)
VAE = dict(
    dim=160,
    dec_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)


def main() -> None:
    _, WanModel, WanVAE_, _ = import_official(Path(os.environ["WAN_REF"]))
    with torch.device("meta"):
        model = WanModel(**TRANSFORMER)
        vae = WanVAE_(**VAE)
    manifest = {
        "source": "Wan-Video/Wan2.2@42bf4cfaa384bc21833865abc2f9e6c0e67233dc, built on the meta device",
        "transformer_args": {k: list(v) if isinstance(v, tuple) else v for k, v in TRANSFORMER.items()},
        "vae_args": VAE,
        "transformer": {k: list(v.shape) for k, v in model.state_dict().items()},
        "vae": {k: list(v.shape) for k, v in vae.state_dict().items()},
    }
    Path(sys.argv[1]).write_text(json.dumps(manifest, indent=0))
    params = sum(torch.Size(s).numel() for s in manifest["transformer"].values())
    keys = len(manifest["transformer"]), len(manifest["vae"])
    print(f"{keys[0]} transformer keys ({params / 1e9:.2f} B values), {keys[1]} VAE keys")


if __name__ == "__main__":
    main()
