"""Record the official Wan2.2 TI2V image-to-video generation (Wan-Video/Wan2.2 @ 42bf4cf,
`wan/textimage2video.py` `WanTI2V.i2v`) on a tiny random model, on the CPU.

Everything on the path is the official code, unmodified, except these stand-ins (each a dependency that
cannot run here):
- `flash_attention` (CUDA-only) -> PyTorch SDPA in float32, over the full lengths (TI2V single-GPU has
  no padding tokens; the text slots are zero-padded to `text_len` and all attended, as in the official
  code). The official GPU path casts q/k/v to bfloat16; this is the clean float32 reference.
- the umT5 text encoder -> recorded random embeddings per prompt (`[L_i, text_dim]`, trimmed as the
  official encoder returns them), including the default (Chinese) negative prompt;
- `torchvision.transforms.functional.to_tensor` -> the same uint8 -> [0, 1] float division (the PyPI
  torchvision does not import beside this torch);
- `torch.cuda.current_device` (evaluated at import by `wan/modules/t5.py`) -> 0; the `WanTI2V` wrapper is
  built with `__new__` on the CPU (its `__init__` loads the real checkpoints onto CUDA).

Every weight of the tiny `WanModel` and `WanVAE_` is re-randomised (the official init zeroes the output
head and the VAE attention projection, which would hide mapping errors). The official-layout state dicts
are written once (`--write-model`) and read by every case, so all cases share one tiny model.

    WAN_REF=/path/to/Wan2.2 /tmp/wanenv/bin/python tools/reference/wan/run_official_wan_ti2v.py \
        tests/fixtures/wan-ti2v-reference --write-model --grid
    WAN_REF=... /tmp/wanenv/bin/python tools/reference/wan/run_official_wan_ti2v.py \
        tests/fixtures/wan-ti2v-reference --case tools/reference/wan/case-a.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore")  # the official code warns on every CPU autocast
torch.cuda.current_device = lambda: 0  # t5.py evaluates it as a default argument at import

# the tiny sizes (see the README); the text length stays the official 512
MODEL = dict(
    model_type="ti2v",
    in_dim=48,
    out_dim=48,
    dim=32,
    ffn_dim=64,
    freq_dim=256,
    text_dim=16,
    text_len=512,
    num_heads=2,
    num_layers=2,
    qk_norm=True,
    cross_attn_norm=True,
    eps=1e-6,
)
VAE = dict(
    dim=4,
    dec_dim=4,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)


def import_official(root: Path):
    import diffusers.configuration_utils  # noqa: F401  (before the stand-in: diffusers probes torchvision's spec)
    import diffusers.models.modeling_utils  # noqa: F401
    import diffusers.schedulers.scheduling_utils  # noqa: F401
    import transformers  # noqa: F401  (likewise)
    from transformers import AutoTokenizer  # noqa: F401

    tv = types.ModuleType("torchvision")
    tf = types.ModuleType("torchvision.transforms.functional")
    tf.to_tensor = lambda img: torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = tf
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.transforms.functional": tf}
    )
    wan = types.ModuleType("wan")  # not wan/__init__.py: it imports the animate and speech models
    wan.__path__ = [str(root / "wan")]
    sys.modules["wan"] = wan
    import wan.modules.model as model_module
    import wan.textimage2video as ti2v
    from wan.configs.shared_config import wan_shared_cfg
    from wan.modules.vae2_2 import WanVAE_

    def sdpa(q, k, v, q_lens=None, k_lens=None, **_):  # [B, L, N, D] in and out
        L = k.shape[1]
        assert k_lens is None or int(k_lens.max()) == L, "no padding tokens on this path"
        out = torch.nn.functional.scaled_dot_product_attention(
            q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2)
        )
        return out.transpose(1, 2).type_as(q)

    model_module.flash_attention = sdpa
    return ti2v, model_module.WanModel, WanVAE_, wan_shared_cfg


def rerandomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif name.endswith(("gamma", "norm_q.weight", "norm_k.weight")) or ".norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, p in module.named_parameters():  # modulation tables [1, 6 or 2, dim]: AdaLN offsets
            if name.endswith("modulation"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for _buf in module.buffers():  # the VAE's RMS_norm etc. keep their buffers
            pass


def save_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


def write_model(out: Path, ti2v, WanModel, WanVAE_) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = WanModel(**MODEL)
    rerandomise(model, 1)
    vae = WanVAE_(**VAE)
    rerandomise(vae, 2)
    save_tensors(out / "official-transformer.safetensors", model.state_dict())
    save_tensors(out / "official-vae.safetensors", vae.state_dict())
    mean, std = _official_tables(ti2v)  # the 48-channel latent tables, as the diffusers VAE config holds them
    config = {"model": MODEL, "vae": VAE, "latents_mean": mean.tolist(), "latents_std": std.tolist()}
    (out / "official-config.json").write_text(json.dumps(config, indent=1))


def load_model(out: Path, WanModel, WanVAE_):
    from safetensors.torch import load_file

    model = WanModel(**MODEL).eval().requires_grad_(False)
    model.load_state_dict(load_file(str(out / "official-transformer.safetensors")), strict=True)
    vae = WanVAE_(**VAE).eval().requires_grad_(False)
    vae.load_state_dict(load_file(str(out / "official-vae.safetensors")), strict=True)
    return model, vae


class Recorder(torch.nn.Module):
    """Wraps the official model: records each call's inputs and output in order."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, x, t, context, seq_len):
        out = self.model(x, t=t, context=context, seq_len=seq_len)
        self.calls.append((x[0].clone(), t.clone(), out[0].clone()))
        return out


def record_case(out: Path, case: dict, ti2v, WanModel, WanVAE_, cfg) -> None:
    from PIL import Image

    model, vae_model = load_model(out, WanModel, WanVAE_)
    gen = torch.Generator().manual_seed(case["embedding_seed"])
    prompts = {case["prompt"]: case["prompt_tokens"]}
    n_prompt = case.get("negative_prompt", "")
    prompts[n_prompt or cfg.sample_neg_prompt] = case["negative_tokens"]
    embeddings = {p: torch.randn(n, MODEL["text_dim"], generator=gen) for p, n in prompts.items()}

    wrapper = ti2v.WanTI2V.__new__(ti2v.WanTI2V)
    vae = ti2v.Wan2_2_VAE.__new__(ti2v.Wan2_2_VAE)
    mean, std = _official_tables(ti2v)
    vae.model, vae.scale, vae.dtype, vae.device = vae_model, [mean, 1.0 / std], torch.float, torch.device("cpu")
    recorder = Recorder(model)
    wrapper.__dict__.update(
        device=torch.device("cpu"),
        rank=0,
        t5_cpu=True,
        init_on_cpu=False,
        num_train_timesteps=1000,
        param_dtype=torch.float32,
        vae_stride=(4, 16, 16),
        patch_size=(1, 2, 2),
        sp_size=1,
        sample_neg_prompt=cfg.sample_neg_prompt,
        vae=vae,
        model=recorder,
        text_encoder=lambda texts, device: [embeddings[t].to(device) for t in texts],
    )
    rng = np.random.default_rng(case["image_seed"])
    w, h = case["width"], case["height"]
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    encoded = []
    encode = vae.encode
    vae.encode = lambda videos: encoded.append(encode(videos)) or encoded[-1]
    decoded = []
    decode = vae.decode
    vae.decode = lambda zs: decoded.append((zs[0].clone(), decode(zs))) or decoded[-1][1]
    video = wrapper.i2v(
        case["prompt"],
        Image.fromarray(image),
        max_area=w * h,
        frame_num=case["frames"],
        shift=case["shift"],
        sample_solver="unipc",
        sampling_steps=case["steps"],
        guide_scale=case["guidance"],
        n_prompt=n_prompt,
        seed=case["seed"],
        offload_model=False,
    )
    g = torch.Generator().manual_seed(case["seed"])  # the draw i2v made, replayed
    noise = torch.randn(48, (case["frames"] - 1) // 4 + 1, h // 16, w // 16, generator=g)
    calls = recorder.calls
    tensors = {
        "image": torch.from_numpy(image),
        "noise": noise,
        "image_latent": encoded[0][0],
        "prompt_embeds": embeddings[case["prompt"]],
        "negative_embeds": embeddings[n_prompt or cfg.sample_neg_prompt],
        "final_latent": decoded[0][0],
        "video": video.half(),  # [-1, 1]; float16 holds far finer than one uint8 level (1/127.5)
    }
    for i in range(0, len(calls), 2):  # cond then uncond per step
        step = i // 2
        tensors[f"step{step}.input"] = calls[i][0]
        tensors[f"step{step}.timestep"] = calls[i][1].float()
        tensors[f"step{step}.cond"] = calls[i][2]
        tensors[f"step{step}.uncond"] = calls[i + 1][2]
        assert torch.equal(calls[i][0], calls[i + 1][0])
    d = out / case["name"]
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(d / "tensors.safetensors", tensors)
    (d / "case.json").write_text(json.dumps(case, indent=1, ensure_ascii=False))
    print(
        case["name"],
        "steps",
        len(calls) // 2,
        "video",
        tuple(video.shape),
        "timesteps",
        [int(tensors[f"step{s}.timestep"][0, -1]) for s in range(len(calls) // 2)],
    )


def record_grid(out: Path) -> None:
    """The official UniPC grids for a few (steps, shift), and one solver run on recorded velocities."""
    from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

    def scheduler(steps, shift):
        s = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        s.set_timesteps(steps, shift=shift)
        return s

    grids = {}
    for steps, shift in [(50, 5.0), (40, 3.0), (4, 3.0)]:
        s = scheduler(steps, shift)
        grids[f"{steps}-{shift}"] = {"sigmas": s.sigmas.tolist(), "timesteps": s.timesteps.tolist()}
    g = torch.Generator().manual_seed(0)
    s = scheduler(7, 5.0)
    x = torch.randn(1, 3, 4, generator=g)
    velocities = [torch.randn(1, 3, 4, generator=g) for _ in range(7)]
    samples = [x.tolist()]
    for t, v in zip(s.timesteps, velocities, strict=True):
        x = s.step(v, t, x, return_dict=False)[0]
        samples.append(x.tolist())
    grids["solver"] = {"steps": 7, "shift": 5.0, "velocities": [v.tolist() for v in velocities], "samples": samples}
    (out / "official-grid.json").write_text(json.dumps(grids))


def _official_tables(ti2v):
    """The official 48-channel mean/std, read from a Wan2_2_VAE built on the meta device path."""
    import inspect

    src = inspect.getsource(ti2v.Wan2_2_VAE.__init__)
    namespace = {"torch": torch}
    body = src[src.rindex("\n", 0, src.index("mean = torch.tensor(")) + 1 : src.index("self.scale")]
    body = textwrap.dedent(body)
    exec(body.replace("device=device", "device='cpu'").replace("dtype=dtype", "dtype=torch.float"), namespace)
    return namespace["mean"], namespace["std"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--write-model", action="store_true")
    parser.add_argument("--case", type=Path)
    parser.add_argument("--grid", action="store_true", help="record the official UniPC grids and one solver run")
    args = parser.parse_args()
    ti2v, WanModel, WanVAE_, cfg = import_official(Path(os.environ["WAN_REF"]))
    if args.write_model:
        write_model(args.out, ti2v, WanModel, WanVAE_)
    if args.grid:
        record_grid(args.out)
    if args.case:
        record_case(args.out, json.loads(args.case.read_text()), ti2v, WanModel, WanVAE_, cfg)


if __name__ == "__main__":
    main()
