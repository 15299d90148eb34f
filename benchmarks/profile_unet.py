"""Where one UNet call's time goes: torch.profiler on one call of each kind, time by kind of work.

GPU, the full-size architecture with random weights at the official defaults (I2VGen-XL 16x512x512):
    python benchmarks/profile_unet.py --full-size --device cuda --dtype float16 --backbone i2vgen-xl
(`bash benchmarks/gpu.sh profile` runs it for the three U-Net backbones.) The same code on a CPU, on the
tiny fixture models, in seconds:
    python benchmarks/profile_unet.py --backbone i2vgen-xl --threads 1

Two calls are profiled, each the second of its kind (the first warms the kernels and allocator): an
inversion call (one clip, no injection) and the edit's call of the first sampling step, every kind of
injection on ([negative, editing]: the source branch, recording the features injected, runs just before
in a call of its own). Each operator's own time (device time on a GPU, CPU time on a CPU) is charged to the
innermost module of a kind below that runs it:

  temporal attention      an attention module whose path names it temporal ("temp" in the path)
  spatial self-attention  any other self-attention (attn1), projections and SDPA included
  cross-attention         attn2 (text / image tokens), projections included
  convolution             Conv2d, Conv3d (the temporal convolutions of I2VGen-XL are Conv3d)
  GroupNorm, LayerNorm    the norms alone (a fused GroupNorm+SiLU would show here)
  linear                  Linear modules outside attention (feed-forward, proj_in / proj_out, embeddings)
  elementwise and other   everything else: activations, residual adds, reshapes, the time embedding

Besides the table: the call's wall time without the profiler (CUDA events or the CPU clock, mean of
--repeat calls on the same inputs with no hooks), the kernels' busy time against that wall (the rest is
the GPU waiting on the CPU: launch gaps), the FLOPs of the call (torch.utils.flop_counter: matrix
products and convolutions) and the rate they ran at, and the attention backend SDPA chose, read from the
kernel or operator names (flash, memory-efficient, cuDNN, or the math path's batched matmuls).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine as bench  # noqa: E402  (the full-size models and the tiny fixtures' folders)

CATEGORIES = ("temporal attention", "spatial self-attention", "cross-attention", "convolution", "GroupNorm",
              "LayerNorm", "linear", "elementwise and other")  # fmt: skip
RANGE = "unet/"  # the profiler ranges the hooks open, "unet/<category>"


def module_categories(unet: torch.nn.Module) -> dict[str, str]:
    """{module path: category} for the modules that open a range; Linear and norm layers inside an
    attention module count as that attention."""
    found: dict[str, str] = {}
    attention_paths: list[str] = []
    for path, module in unet.named_modules():
        kind = type(module).__name__
        if kind.endswith("Attention") and hasattr(module, "to_q"):  # diffusers' Attention and ours
            attention_paths.append(path + ".")
            if "temp" in path.lower():
                found[path] = "temporal attention"
            else:
                found[path] = "cross-attention" if path.endswith("attn2") else "spatial self-attention"
    for path, module in unet.named_modules():
        if path in found or any(path.startswith(a) for a in attention_paths):
            continue
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            found[path] = "convolution"
        elif isinstance(module, torch.nn.GroupNorm):
            found[path] = "GroupNorm"
        elif isinstance(module, torch.nn.LayerNorm):
            found[path] = "LayerNorm"
        elif isinstance(module, torch.nn.Linear):
            found[path] = "linear"
    return found


class Ranges:
    """Forward hooks that open `unet/<category>` profiler ranges around the categorised modules."""

    def __init__(self, unet: torch.nn.Module):
        self.handles = []
        modules = dict(unet.named_modules())
        for path, category in module_categories(unet).items():
            module = modules[path]
            stack: list = []

            def enter(_module, _args, category=category, stack=stack):
                scope = torch.profiler.record_function(RANGE + category)
                scope.__enter__()
                stack.append(scope)

            def leave(_module, _args, _out, stack=stack):
                stack.pop().__exit__(None, None, None)

            self.handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def charge(prof, cuda: bool) -> tuple[dict[str, float], list[str]]:
    """Microseconds of own time per category, and the names of the operators / kernels under attention."""
    spent: dict[str, float] = defaultdict(float)
    attention_names: list[str] = []
    for event in prof.events():
        if event.name.startswith(RANGE):
            continue
        own = event.self_device_time_total if cuda else event.self_cpu_time_total
        if own <= 0:
            continue
        parent, category = event.cpu_parent, "elementwise and other"
        while parent is not None:
            if parent.name.startswith(RANGE):
                category = parent.name[len(RANGE) :]
                break
            parent = parent.cpu_parent
        spent[category] += own
        if "attention" in category:
            names = [k.name for k in getattr(event, "kernels", [])] if cuda else [event.name]
            attention_names += names or [event.name]
    return spent, attention_names


def attention_backend(names: list[str]) -> str:
    text = " ".join(names).lower()
    found = [label for label, keys in (
        ("flash", ("flash",)), ("memory-efficient", ("efficient", "fmha", "cutlass")), ("cuDNN", ("cudnn",)),
    ) if any(k in text for k in keys)]  # fmt: skip
    if "bmm" in text or "_scaled_dot_product_attention_math" in text:
        found.append("math (batched matmuls)")
    return ", ".join(found) or "none seen"


def wall_seconds(call, repeat: int, cuda: bool) -> float:
    call()  # warm
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            call()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - t0) / repeat


def profile_calls(backbone, frames: int, width: int, height: int, cuda: bool) -> dict[str, dict]:
    """Profile the second inversion call and the second sampling call of an injecting edit."""
    from torch.profiler import ProfilerActivity, profile

    from anyv2v_batch.inversion import invert_batch
    from anyv2v_batch.pnp_edit import EditRequest, edit_batch
    from anyv2v_batch.settings import backbone_defaults

    name = backbone.name
    defaults = backbone_defaults(name)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    method = "velocity" if backbone.flow else "predict"
    inner = getattr(backbone, method)
    state = {"kind": "", "seen": 0, "results": {}}

    def wrapped(latents, t, cond):
        state["seen"] += 1
        if state["seen"] != 2:
            return inner(latents, t, cond)
        ranges = Ranges(backbone.unet)
        try:
            if cuda:
                torch.cuda.synchronize()
            with profile(activities=activities) as prof:
                out = inner(latents, t, cond)
                if cuda:
                    torch.cuda.synchronize()
        finally:
            ranges.remove()
        spent, names = charge(prof, cuda)
        state["results"][state["kind"]] = {"spent_us": dict(spent), "attention": attention_backend(names),
                                           "args": (latents, t, cond), "batch": int(latents.shape[0])}  # fmt: skip
        return out

    setattr(backbone, method, wrapped)
    clip = bench.synthetic_clip(frames, width, 0, height)
    try:
        state["kind"], state["seen"] = "inversion", 0
        inversion_settings = replace(defaults["inversion"], steps=4)
        if getattr(inversion_settings, "save_steps", None):  # SEINE: latents saved on a grid of their own
            inversion_settings = replace(inversion_settings, save_steps=4)
        settings = replace(defaults["edit"], prompt="a robot", steps=4, init_step=0)
        if not backbone.flow:  # inject at every step run, so the profiled step injects every kind
            settings = replace(settings, pnp_conv=1.0, pnp_spatial=1.0, pnp_temporal=1.0)
        inversion = invert_batch(backbone, [clip], inversion_settings, fps=8)[0]
        state["kind"], state["seen"] = "sampling (injecting)", 0
        edit_batch(backbone, [EditRequest(inversion, clip[0], settings)])
    finally:
        setattr(backbone, method, inner)

    from torch.utils.flop_counter import FlopCounterMode

    for result in state["results"].values():
        latents, t, cond = result.pop("args")
        result["wall_s"] = wall_seconds(lambda: inner(latents, t, cond), 3, cuda)  # noqa: B023 (used at once)
        counter = FlopCounterMode(display=False)
        with counter:
            inner(latents, t, cond)
        result["flops"] = counter.get_total_flops()
    return state["results"]


def table(kind: str, result: dict, cuda: bool) -> str:
    spent = result["spent_us"]
    busy = sum(spent.values()) / 1e6
    wall = result["wall_s"]
    what = "kernel time" if cuda else "operator CPU time"
    lines = [f"### {kind}: batch {result['batch']}", "", f"| category | ms ({what}) | share |", "|---|---|---|"]
    for category in CATEGORIES:
        ms = spent.get(category, 0.0) / 1e3
        lines.append(f"| {category} | {ms:.2f} | {ms / 1e3 / busy:.1%} |" if busy else f"| {category} | 0 | - |")
    lines.append(f"| **all** | {busy * 1e3:.2f} | 100% |")
    flops = result["flops"]
    lines += ["", f"- wall per call without the profiler: {wall * 1e3:.2f} ms (mean of 3, no hooks)"]
    if cuda:
        idle = max(0.0, wall - busy)
        lines.append(f"- kernels busy {busy * 1e3:.2f} ms of it; GPU waiting on the CPU (launch gaps): "
                     f"{idle * 1e3:.2f} ms ({idle / wall:.0%})")  # fmt: skip
    unit, scale = ("T", 1e12) if flops >= 1e11 else ("G", 1e9)
    lines += [f"- FLOPs (matmuls and convolutions): {flops / scale:.3f} {unit}; at the wall above: "
              f"{flops / scale / wall:.1f} {unit}FLOP/s",
              f"- attention backend seen: {result['attention']}", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", nargs="+", default=["i2vgen-xl"], choices=[*bench.UNETS, "all"])
    p.add_argument("--full-size", action="store_true", help="full-size random-weight models (else the tiny ones)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--frames", type=int, default=None, help="default: the official frames (tiny: its own)")
    p.add_argument("--size", type=int, default=None, help="width and height (default: official / tiny)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from anyv2v_batch import load_backbone
    from anyv2v_batch.loading import quiet_libraries
    from anyv2v_batch.settings import backbone_defaults

    quiet_libraries()
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"# one UNet call of each kind; {'full size, random weights' if args.full_size else 'tiny fixture models'}; "
          f"{args.device} ({device_name}); torch {torch.__version__}; {args.dtype}\n")  # fmt: skip
    names = list(bench.UNETS) if "all" in args.backbone else args.backbone
    figures = {}
    for name in names:
        dtype = getattr(torch, args.dtype)
        if args.full_size:
            backbone = bench.full_size_backbone(name, args.device, dtype)
            clip = backbone_defaults(name)["clip"]
            frames, size = clip.frames, clip.width
        else:
            backbone = load_backbone(name, str(bench.TINY[name]), device=args.device, dtype=dtype)
            frames, size = bench.TINY_GEOMETRY[name]
        frames, size = args.frames or frames, args.size or size
        if hasattr(backbone, "blank_latent"):
            backbone.blank_latent(size, size)
        print(f"## {name}: {frames}x{size}x{size}\n")
        results = profile_calls(backbone, frames, size, size, cuda)
        for kind, result in results.items():
            print(table(kind, result, cuda))
        figures[name] = results
        del backbone
        if cuda:
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
