"""The `anyv2v-batch` command line: thin wrappers over the engine.

Every failure a user can fix ends as one line on stderr (`error: ...`) and a non-zero exit status;
`--debug` shows the traceback instead. Exit status 1: the input or environment is wrong; 2: the
command line is wrong; 130: interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer

from .errors import AnyV2VError
from .settings import ClipSettings, WindowSettings, backbone_defaults

app = typer.Typer(
    name="anyv2v-batch",
    help="AnyV2V video editing: one clip for previews, whole datasets as Ray jobs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_DEBUG = {"on": False}
# typer >= 0.16 vendors click: take its usage-error class from typer's own BadParameter
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@app.callback()
def _root() -> None:
    """AnyV2V video editing: one clip for previews, whole datasets as Ray jobs."""


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message, err=True)


def _check_output(source: Path, output: Path, overwrite: bool, kinds: str = "video") -> None:
    """An output that is not the input, of a kind the command writes, and not there unless --overwrite.

    kinds "video": a .mp4 file or a folder (PNG frames); "png": a .png file."""
    if output.resolve() == source.resolve():
        raise AnyV2VError(f"output {str(output)!r} is the source itself; choose another -o path")
    if kinds == "png" and output.suffix.lower() != ".png":
        raise AnyV2VError(f"output {str(output)!r}: edit-frame writes a .png file")
    if kinds == "video" and output.suffix and output.suffix.lower() != ".mp4":
        raise AnyV2VError(f"output {str(output)!r}: use a .mp4 file or a folder name (for PNG frames)")
    if output.exists() and not overwrite:
        raise AnyV2VError(f"output {str(output)!r} already exists; pass --overwrite to replace it")
    if output.exists() and output.is_dir() != (output.suffix == ""):
        raise AnyV2VError(f"output {str(output)!r} exists and is not a {'folder' if not output.suffix else 'file'}")
    from .video_io import check_writable_path

    check_writable_path(output)  # a temporary file where the output will go, before any model loads


SOLVER_HELP = "Inversion solver: ddim (the U-Nets), euler or midpoint (wan2.2-ti2v; midpoint: 2 calls a step)."
PNP_ATTN_HELP = "wan2.2-ti2v: fraction of steps injecting the source's self-attention Q/K [0.5]."
PNP_FEATURE_HELP = "wan2.2-ti2v: fraction of steps injecting the source's feed-forward features [0.2]."
ATTN_INJECTION_HELP = "wan2.2-ti2v: qk (the source's Q/K replace the edit's) or kv (the source's K/V shared) [qk]."
SHIFT_HELP = "wan2.2-ti2v: the sigma grid's shift, for sampling and inversion alike [5.0]."


@app.command()
def edit(
    source: Annotated[Path, typer.Argument(help="Source video file (decord) or folder of frame images.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.mp4 (H.264) or a folder (PNG frames).")],
    first_frame: Annotated[
        Path | None, typer.Option("--first-frame", help="The edited first frame (for --editor provided).")
    ] = None,
    editor: Annotated[
        str | None, typer.Option(help="First-frame editor (see `anyv2v-batch editors`) [default: provided].")
    ] = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    edit_prompt: Annotated[str, typer.Option(help="Instruction for the first-frame editor.")] = "",
    editor_option: Annotated[
        list[str] | None, typer.Option("--editor-option", help="Editor option KEY=VALUE (repeatable).")
    ] = None,
    accept_noncommercial_models: Annotated[
        bool, typer.Option("--accept-noncommercial-models", help=NONCOMMERCIAL_HELP)
    ] = False,
    prompt: Annotated[str, typer.Option(help="Prompt describing the edited video.")] = "",
    negative_prompt: Annotated[
        str | None, typer.Option(help="Negative prompt [default: the backbone's official one].")
    ] = None,
    inversion_prompt: Annotated[str, typer.Option(help="Prompt for DDIM inversion (the source branch).")] = "",
    inversion_steps: Annotated[
        int | None, typer.Option(help="Inversion steps [default: wan2.2-ti2v 50, else 500 (DDIM)].")
    ] = None,
    inversion_save_steps: Annotated[
        int | None, typer.Option(help="Keep inverted latents on this coarser grid [default: seine 250, else all].")
    ] = None,
    inversion_solver: Annotated[str | None, typer.Option(help=SOLVER_HELP)] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 50,
    guidance_scale: Annotated[
        float | None, typer.Option(help="Classifier-free guidance [default: i2vgen-xl 9, consisti2v 35, seine 4].")
    ] = None,
    pnp_conv: Annotated[float | None, typer.Option(help="Fraction of steps injecting conv features [0.2].")] = None,
    pnp_spatial: Annotated[
        float | None, typer.Option(help="Fraction of steps injecting spatial attention Q/K [0.2].")
    ] = None,
    pnp_temporal: Annotated[
        float | None, typer.Option(help="Fraction of steps injecting temporal attention Q/K [0.5].")
    ] = None,
    pnp_cross: Annotated[float, typer.Option(help="Fraction of steps injecting cross-attention Q/K (seine).")] = 0.0,
    pnp_attn: Annotated[float | None, typer.Option(help=PNP_ATTN_HELP)] = None,
    pnp_feature: Annotated[float | None, typer.Option(help=PNP_FEATURE_HELP)] = None,
    shift: Annotated[float | None, typer.Option(help=SHIFT_HELP)] = None,
    attn_injection: Annotated[str | None, typer.Option(help=ATTN_INJECTION_HELP)] = None,
    init_step: Annotated[
        int | None, typer.Option(help="Index of the first sampling step [default: consisti2v 4, else 0].")
    ] = None,
    injection_window: Annotated[
        str, typer.Option(help="official: windows over the full schedule; from-start: from --init-step.")
    ] = "official",
    fix_source_frame: Annotated[
        bool,
        typer.Option(
            "--fix-source-frame", help="consisti2v: condition the source branch on the source frame (official: edited)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 8888,
    fps: Annotated[
        float | None,
        typer.Option(help="Resample a video to this fps; the fps condition [default: wan2.2-ti2v 24, else 8]."),
    ] = None,
    frames: Annotated[str | None, typer.Option(help=FRAMES_HELP + " [default: wan2.2-ti2v 121, else 16]")] = None,
    max_frames: Annotated[int, typer.Option(help=MAX_FRAMES_HELP)] = 256,
    too_long: Annotated[str, typer.Option(help=TOO_LONG_HELP)] = "error",
    window_frames: Annotated[int | None, typer.Option(help=WINDOW_FRAMES_HELP)] = None,
    window_overlap: Annotated[int, typer.Option(help=WINDOW_OVERLAP_HELP)] = 1,
    window_max_frames: Annotated[int | None, typer.Option(help=WINDOW_MAX_FRAMES_HELP)] = None,
    window_match_stats: Annotated[float, typer.Option(help=WINDOW_MATCH_HELP)] = 0.0,
    window_blend: Annotated[str, typer.Option(help=WINDOW_BLEND_HELP)] = "earlier",
    width: Annotated[
        int | None, typer.Option(help="Width, multiple of 8 [default: consisti2v 256, wan2.2-ti2v 1280, else 512].")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Height, multiple of 8 [default: wan2.2-ti2v 704, else as width].")
    ] = None,
    resize: Annotated[str, typer.Option(help="Fit frames to the size: stretch (official), crop or pad.")] = "stretch",
    backbone: Annotated[str, typer.Option(help="i2vgen-xl, consisti2v, seine or wan2.2-ti2v.")] = "i2vgen-xl",
    model: Annotated[str | None, typer.Option(help="Hub id or local folder (default: the official weights).")] = None,
    variant: Annotated[str | None, typer.Option(help="Weight variant to load, e.g. fp16.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16.")
    ] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the UNet (pays off on long runs).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Score the output and print the scores.")] = False,
    evaluate_model: Annotated[str | None, typer.Option(help=EVALUATE_MODEL_HELP)] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Edit one clip: invert SOURCE, then propagate the edited first frame through it."""
    _DEBUG["on"] = debug
    started = time.perf_counter()
    from .backbones import backbone_class

    backbone_cls = backbone_class(backbone)
    defaults = backbone_defaults(backbone)  # flags left out take the preset's, else the backbone's official values
    if preset:
        from .presets import task_preset

        chosen = task_preset(preset, backbone, where="--preset")
        defaults["edit"] = dataclasses.replace(defaults["edit"], **chosen.edit)
        editor = editor or chosen.editor
    editor = editor or "provided"
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    clip_settings = dataclasses.replace(
        defaults["clip"], resize=resize, max_frames=max_frames, too_long=too_long,
        **given(width=width, height=height, frames=_frames(frames), fps=fps),
    ).validate()  # fmt: skip
    fps = clip_settings.fps
    window_settings = WindowSettings(
        frames=window_frames, overlap=window_overlap, max_frames=window_max_frames, match_stats=window_match_stats,
        blend=window_blend,
    ).validate()  # fmt: skip
    width, height = clip_settings.width, clip_settings.height
    inv_settings = dataclasses.replace(
        defaults["inversion"], prompt=inversion_prompt,
        **given(steps=inversion_steps, save_steps=inversion_save_steps, solver=inversion_solver, shift=shift),
    ).validate()  # fmt: skip
    edit_settings = dataclasses.replace(
        defaults["edit"],
        prompt=prompt,
        steps=steps,
        pnp_cross=pnp_cross,
        seed=seed,
        injection_window=injection_window,
        fix_source_frame=fix_source_frame,
        **given(negative_prompt=negative_prompt, guidance_scale=guidance_scale, init_step=init_step),
        **given(pnp_conv=pnp_conv, pnp_spatial=pnp_spatial, pnp_temporal=pnp_temporal),
        **given(pnp_attn=pnp_attn, pnp_feature=pnp_feature, shift=shift, attn_injection=attn_injection),
    ).validate()
    if not source.exists():
        raise AnyV2VError(f"source {str(source)!r} does not exist")
    options = _editor_options(editor, editor_option, first_frame, edit_prompt, accept_noncommercial_models)
    _check_output(source, output, overwrite)

    from .backbones import load_backbone
    from .chain import ChainRequest, edit_chains
    from .inversion import invert
    from .loading import quiet_libraries
    from .pnp_edit import check_edit_settings, plan_sampling, prepare_first_frame
    from .pnp_edit import edit as run_edit
    from .video_io import read_source, source_length, write_video
    from .windows import Window, clip_total, plan_for, resolve_limits, window_clip

    quiet_libraries()
    backbone_cls.check_settings(model, clip_settings)  # from the configs, before any work
    check_edit_settings(backbone_cls, model, edit_settings, inv_settings)
    limits = resolve_limits(backbone_cls.window_limits(model), window_settings, backbone)
    total, truncated = clip_settings.frames, False
    if total == "all" or total > limits.max_frames:  # counted from the file's index: nothing decoded yet
        length = source_length(source, fps, clip_settings.max_frames + 1)
        total, truncated = clip_total(clip_settings, length.frames, length.seconds)
    plan = plan_for(total, limits, window_settings)
    scorer = None
    if evaluate:  # loaded first: missing scorer weights fail before the long work
        from .evaluation import DEFAULT_SCORER_MODEL
        from .scores import Scorer

        scorer = Scorer(evaluate_model or DEFAULT_SCORER_MODEL, device=device, dtype="float32")
    _say(quiet, f"loading {backbone} from {model or backbone_cls.default_model}")
    bb = load_backbone(backbone, model, device=device, dtype=dtype, variant=variant)
    for w in plan:
        bb.check_clip(window_clip(clip_settings, w.frames))
    needed = plan_sampling(bb, edit_settings, inv_settings).needed
    first = plan[0]
    clip = read_source(source, first.frames, fps, width, height, resize)  # type: ignore[arg-type]
    edited = prepare_first_frame(
        _run_editor(editor, options, clip.frames[0], source, seed, device, dtype, quiet, accept_noncommercial_models),
        width,
        height,
    )
    if compile:
        bb.compile()
    cut = f" (cut to --max-frames {total})" if truncated else ""
    windows = f" in {len(plan)} windows of {first.frames}" if len(plan) > 1 else ""
    _say(quiet, f"inverting {source} ({total} frames{cut}{windows}, {width}x{height}, {inv_settings.steps} steps)")
    seconds = {"inversion": 0.0}

    def inversion_of(w: Window):
        # only this window's frames are decoded: a long source never sits in memory whole
        frames_w = clip.frames if w.index == 0 else read_source(source, w.frames, fps, width, height, resize, w.start)
        t = time.perf_counter()
        inverted = invert(bb, getattr(frames_w, "frames", frames_w), inv_settings, fps, needed)
        seconds["inversion"] += time.perf_counter() - t
        if len(plan) > 1:
            _say(quiet, f"window {w.index + 1}/{len(plan)}: frames {w.start}-{w.end - 1}")
        return inverted

    t0 = time.perf_counter()
    if len(plan) == 1:
        result_frames = run_edit(bb, inversion_of(first), edited, edit_settings).frames
    else:
        chain = edit_chains(bb, plan, inversion_of, [ChainRequest(edited, edit_settings)], window_settings)[0]
        result_frames = chain.frames
        seams = ", ".join(f"{s:.2f}" for s in chain.seam_steps)
        _say(quiet, f"seam steps (change at each join / median change inside windows): {seams}")
    edit_seconds = time.perf_counter() - t0 - seconds["inversion"]
    write_video(output, result_frames, fps)
    _say(
        quiet,
        f"wrote {output} ({total} frames, {width}x{height}, {fps:g} fps): inversion {seconds['inversion']:.1f} s, "
        f"edit {edit_seconds:.1f} s, total {time.perf_counter() - started:.1f} s",
    )
    if scorer is not None:  # the clip as written: an .mp4 is scored as a reader decodes it
        written = read_source(output, total, fps, width, height, resize).frames if output.suffix else result_frames
        source_frames = clip.frames if len(plan) == 1 else read_source(source, total, fps, width, height, resize).frames
        scores = scorer.score(written, source_frames, edited, edit_settings.prompt)
        for name, value in scores.items():
            typer.echo(f"{name}\t{value:.6f}")


def _editor_options(
    editor: str, pairs: list[str] | None, first_frame: Path | None, edit_prompt: str, accept_noncommercial: bool
) -> dict[str, object]:
    """The editor's options from --editor-option KEY=VALUE, --first-frame and --edit-prompt, checked."""
    from .editors import check_licence, editor_class
    from .job import parse_set

    cls = editor_class(editor)  # an unknown editor fails here, before any work
    check_licence(cls, accept_noncommercial)
    options: dict[str, object] = parse_set(pairs or [], flag="--editor-option")
    if editor == "provided":
        if first_frame is None and "image" not in options:
            raise AnyV2VError("--first-frame is required with --editor provided (or choose another --editor)")
        if first_frame is not None:
            if not first_frame.exists():
                raise AnyV2VError(f"--first-frame {str(first_frame)!r} does not exist")
            options["image"] = str(first_frame)
    elif first_frame is not None:
        raise AnyV2VError(f"--first-frame is for --editor provided; {editor!r} makes the edited frame itself")
    if edit_prompt:
        options["instruction"] = edit_prompt
    cls.check_options(options)
    return options


def _run_editor(
    editor: str, options: dict, frame, source: Path, seed: int, device: str, dtype: str, quiet: bool, accept: bool
):
    from .editors import SampleContext, load_editor

    if editor != "provided":
        _say(quiet, f"editing the first frame with {editor}")
    loaded = load_editor(editor, device=device, dtype=dtype, accept_noncommercial_models=accept)
    return loaded.edit(frame, options, SampleContext(source.stem, seed=seed))


@app.command("edit-frame")
def edit_frame(
    source: Annotated[Path, typer.Argument(help="Source video file or folder of frames (its first frame is edited).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The edited frame, a .png file.")],
    editor: Annotated[str, typer.Option(help="First-frame editor (see `anyv2v-batch editors`).")] = "provided",
    edit_prompt: Annotated[str, typer.Option(help="Instruction for the editor.")] = "",
    editor_option: Annotated[
        list[str] | None, typer.Option("--editor-option", help="Editor option KEY=VALUE (repeatable).")
    ] = None,
    first_frame: Annotated[Path | None, typer.Option("--first-frame", help="For --editor provided.")] = None,
    accept_noncommercial_models: Annotated[
        bool, typer.Option("--accept-noncommercial-models", help=NONCOMMERCIAL_HELP)
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 8888,
    fps: Annotated[float, typer.Option(help="As for `edit` (the first frame does not depend on it).")] = 8.0,
    width: Annotated[int, typer.Option(help="Width in pixels (multiple of 8).")] = 512,
    height: Annotated[int, typer.Option(help="Height in pixels (multiple of 8).")] = 512,
    resize: Annotated[str, typer.Option(help="stretch (official), crop or pad.")] = "stretch",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Write only the edited first frame of SOURCE, to try editors quickly."""
    _DEBUG["on"] = debug
    ClipSettings(frames=2, fps=fps, width=width, height=height, resize=resize).validate()
    if not source.exists():
        raise AnyV2VError(f"source {str(source)!r} does not exist")
    _check_output(source, output, overwrite, kinds="png")
    options = _editor_options(editor, editor_option, first_frame, edit_prompt, accept_noncommercial_models)

    from .loading import quiet_libraries
    from .pnp_edit import prepare_first_frame
    from .video_io import atomic_write_bytes, encode_png, read_source

    clip = read_source(source, 1, fps, width, height, resize)  # type: ignore[arg-type]
    quiet_libraries()
    edited = _run_editor(
        editor, options, clip.frames[0], source, seed, device, dtype, quiet, accept_noncommercial_models
    )
    atomic_write_bytes(output, encode_png(prepare_first_frame(edited, width, height)))
    _say(quiet, f"wrote {output} ({width}x{height})")


@app.command()
def editors() -> None:
    """List every first-frame editor and its options (plug-ins included)."""
    from .editors import available_editors

    for info in available_editors():
        if info.error:
            typer.echo(f"{info.name} [{info.source}]: cannot be loaded: {info.error}")
            continue
        typer.echo(f"{info.name} [{info.source}]: {info.cls.description}")
        if info.cls.noncommercial:
            typer.echo(f"    NON-COMMERCIAL: {info.cls.licence_note or 'its models are for non-commercial use only'}")
        for option, text in info.cls.options.items():
            typer.echo(f"    {option}: {text}")


@app.command()
def presets() -> None:
    """List AnyV2V's task presets: the official propagation settings for a kind of edit."""
    from .presets import OFFICIAL_CONFIG, TASK_PRESETS

    typer.echo(f"from {OFFICIAL_CONFIG}; explicit settings win over a preset")
    for p in TASK_PRESETS.values():
        values = ", ".join(f"{k} {v:g}" for k, v in p.edit.items())
        typer.echo(f"{p.name} ({p.task_name}, {'/'.join(p.backbones)}): {p.description}")
        typer.echo(f"    editor {p.editor}; {values}  [{p.source}]")
        if p.alternatives:
            typer.echo(f"    other official clips (conv/spatial/temporal): {'; '.join(p.alternatives)}")


@app.command("convert-seine")
def convert_seine_command(
    output: Annotated[Path, typer.Option("-o", "--output", help="The folder to write (SD-1.4 layout, safetensors).")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="SEINE's seine.pt [default: in --sd-model, else from the hub].")
    ] = None,
    sd_model: Annotated[
        str, typer.Option(help="Stable Diffusion 1.4 folder or hub id (VAE, text encoder, tokenizer, scheduler).")
    ] = "CompVis/stable-diffusion-v1-4",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Write SEINE's weights once as safetensors: `--backbone seine --model OUTPUT` then loads no pickle."""
    _DEBUG["on"] = debug
    from .convert import convert_seine
    from .loading import quiet_libraries

    quiet_libraries()
    written = convert_seine(checkpoint, sd_model, output, overwrite=overwrite)
    _say(quiet, f"wrote {written}: use --backbone seine --model {written}")


@app.command("convert-anydoor")
def convert_anydoor_command(
    checkpoint: Annotated[
        Path, typer.Option(help="AnyDoor's epoch=1-step=8687.ckpt (or its state_dict as .safetensors).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The folder to write (safetensors, no pickle).")],
    config: Annotated[
        Path | None,
        typer.Option(help="The ldm YAML the checkpoint was trained with [default: AnyDoor's anydoor.yaml]."),
    ] = None,
    dino_heads: Annotated[
        int | None, typer.Option(help="DINOv2 attention heads [default: 64 channels per head, ViT-g/14: 24].")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Write AnyDoor's weights once as safetensors: `--editor anydoor --editor-option model=OUTPUT` then."""
    _DEBUG["on"] = debug
    from .convert_anydoor import convert_anydoor
    from .loading import quiet_libraries

    quiet_libraries()
    written = convert_anydoor(checkpoint, output, config=config, dino_heads=dino_heads, overwrite=overwrite)
    _say(quiet, f"wrote {written}: use --editor anydoor --editor-option model={written}")


@app.command()
def pack(
    folder: Annotated[Path, typer.Argument(help="Folder of videos (any depth), edited first frames and captions.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the shards (a local path).")],
    captions: Annotated[
        Path | None, typer.Option(help="JSON, YAML or CSV: video (path, file name or stem) -> caption or fields.")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Samples per shard, at most.")] = 100,
    max_shard_bytes: Annotated[
        str, typer.Option(help="Bytes per shard, at most (e.g. 500MB, 2GiB); a bigger sample gets a shard alone.")
    ] = "1GB",
    pattern: Annotated[str, typer.Option(help="Shard file names, with one number field.")] = "{:06d}.tar",
    keys: Annotated[str, typer.Option(help="Sample keys from the file's stem, or its path under FOLDER.")] = "stem",
    overwrite: Annotated[bool, typer.Option(help="Replace the shards of an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only the files left out and errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Pack a folder of videos into WebDataset shards for `run` (keys from file names)."""
    _DEBUG["on"] = debug
    from .pack import pack_folder, parse_bytes

    summary = pack_folder(
        folder,
        output,
        captions=captions,
        shard_size=shard_size,
        max_shard_bytes=parse_bytes(max_shard_bytes),
        pattern=pattern,
        keys=keys,
        overwrite=overwrite,
        report=lambda line: typer.echo(line, err=True),  # files left out are shown even with --quiet
    )
    _say(quiet, summary.line())


@app.command()
def report(
    output: Annotated[str, typer.Argument(help="The job's output folder or URL (its metadata/ and shards/).")],
    report_folder: Annotated[str, typer.Option("-o", "--output", help="Folder or URL to write the report into.")],
    per_variant: Annotated[
        int, typer.Option(help="Pairs in each variant's gallery: the N worst and N more at random.")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the random part of the galleries.")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Write a static HTML report of a job's output: counts, score histograms, timings, galleries, errors."""
    _DEBUG["on"] = debug
    from .pipelines.report import write_report

    summary = write_report(output, report_folder, per_variant, seed, log=lambda m: _say(quiet, m))
    _say(quiet, summary.line())


@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="A new or empty folder for everything it writes.")],
    clips: Annotated[int, typer.Option(help="World clips to edit (3 and more add a camera pan).")] = 2,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only the last line and errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and Ray's own notices.")] = False,
) -> None:
    """A first run, offline on a CPU: world clips edited by the model organism, scored, and a report."""
    _DEBUG["on"] = debug
    if debug:
        os.environ["ANYV2V_DEBUG"] = "1"
    from .pipelines.demo import run_demo
    from .pipelines.progress import ProgressDisplay

    display = ProgressDisplay(stream=None if quiet else sys.stderr, every=30.0)
    summary = run_demo(output, clips, log=lambda m: _say(quiet, m), display=display)
    typer.echo(summary.line(), err=True)


PRESET_HELP = (
    "AnyV2V task preset: the official propagation settings (and editor) for subject-driven or identity edits; "
    "see `anyv2v-batch presets`. Flags given win."
)
NONCOMMERCIAL_HELP = "Accept models licensed for non-commercial research only (needed by --editor instantid)."
FRAMES_HELP = "Frames per clip from its start, or 'all': every frame of the source at --fps (up to --max-frames)."
MAX_FRAMES_HELP = "--frames all: the most frames a clip may have."
TOO_LONG_HELP = "--frames all, a source over --max-frames: error, or truncate (edit its first --max-frames)."
WINDOW_FRAMES_HELP = "Length of chained windows for clips longer than one window [default: the backbone's, 16]."
WINDOW_OVERLAP_HELP = "Frames shared by consecutive windows (>= 1)."
WINDOW_MAX_FRAMES_HELP = "The longest clip edited as one window [default: i2vgen-xl 128, consisti2v and seine 16]."
WINDOW_MATCH_HELP = "Match each window's latent channel mean/std to window 1's by this strength (0: off)."
WINDOW_BLEND_HELP = "Overlapping frames: earlier (the earlier window's) or linear (a crossfade)."


def _frames(value: str | None) -> int | str | None:
    """--frames: a count or 'all'."""
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise AnyV2VError(f"--frames must be an integer >= 2 or 'all', got {value!r}") from None


# flag -> job field it overrides (`run`); only flags given on the command line override
RUN_FLAGS = {
    "output": "output", "editor": "editor.name", "edit_prompt": "edit_prompt", "prompt": "edit.prompt",
    "negative_prompt": "edit.negative_prompt", "inversion_prompt": "inversion.prompt",
    "inversion_steps": "inversion.steps", "steps": "edit.steps", "guidance_scale": "edit.guidance_scale",
    "pnp_conv": "edit.pnp_conv", "pnp_spatial": "edit.pnp_spatial", "pnp_temporal": "edit.pnp_temporal",
    "init_step": "edit.init_step", "seed": "seed", "fps": "clip.fps", "frames": "clip.frames",
    "width": "clip.width", "height": "clip.height", "resize": "clip.resize", "backbone": "backbone",
    "model": "model", "device": "device", "dtype": "dtype", "address": "ray.address", "inversions": "inversions",
    "inversion_save_steps": "inversion.save_steps", "pnp_cross": "edit.pnp_cross",
    "fix_source_frame": "edit.fix_source_frame", "redo_changed": "redo_changed",
    "evaluate_model": "evaluate.model", "max_frames": "clip.max_frames", "too_long": "clip.too_long",
    "window_frames": "window.frames", "window_overlap": "window.overlap", "window_max_frames": "window.max_frames",
    "window_match_stats": "window.match_stats", "window_blend": "window.blend", "preset": "preset",
    "accept_noncommercial_models": "accept_noncommercial_models", "pnp_attn": "edit.pnp_attn",
    "pnp_feature": "edit.pnp_feature", "shift": ("edit.shift", "inversion.shift"),
    "inversion_solver": "inversion.solver", "attn_injection": "edit.attn_injection",
}  # fmt: skip
PROGRESS_EVERY_HELP = (
    "Without a terminal, log the progress line every SECONDS (a terminal's is redrawn in place). "
    "<output>/_progress.json holds the same numbers."
)
EVALUATE_HELP = "Score every output (evaluate: in the job; thresholds and mode by --set evaluate.*)."
EVALUATE_MODEL_HELP = "CLIP model that scores: hub id or local folder [default: openai/clip-vit-large-patch14]."


@app.command()
def run(
    job_file: Annotated[Path | None, typer.Argument(help="Job file (YAML); flags override its fields.")] = None,
    input: Annotated[list[str] | None, typer.Option("--input", help="Shard path / URL / pattern (repeatable).")] = None,
    output: Annotated[str | None, typer.Option(help="Output folder or URL.")] = None,
    editor: Annotated[str | None, typer.Option(help="First-frame editor (e.g. provided).")] = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    edit_prompt: Annotated[str | None, typer.Option(help="Instruction for the first-frame editor.")] = None,
    editor_option: Annotated[
        list[str] | None, typer.Option("--editor-option", help="Editor option KEY=VALUE (repeatable).")
    ] = None,
    accept_noncommercial_models: Annotated[
        bool | None, typer.Option("--accept-noncommercial-models", help=NONCOMMERCIAL_HELP)
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt; may template metadata, e.g. '{caption}'.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
    inversion_prompt: Annotated[str | None, typer.Option(help="Inversion prompt.")] = None,
    inversion_steps: Annotated[int | None, typer.Option(help="DDIM inversion steps.")] = None,
    inversion_save_steps: Annotated[int | None, typer.Option(help="Keep inverted latents on this grid.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps.")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    pnp_conv: Annotated[float | None, typer.Option(help="Conv injection fraction.")] = None,
    pnp_spatial: Annotated[float | None, typer.Option(help="Spatial Q/K injection fraction.")] = None,
    pnp_temporal: Annotated[float | None, typer.Option(help="Temporal Q/K injection fraction.")] = None,
    pnp_cross: Annotated[float | None, typer.Option(help="Cross-attention Q/K injection fraction (seine).")] = None,
    pnp_attn: Annotated[float | None, typer.Option(help=PNP_ATTN_HELP)] = None,
    pnp_feature: Annotated[float | None, typer.Option(help=PNP_FEATURE_HELP)] = None,
    shift: Annotated[float | None, typer.Option(help=SHIFT_HELP)] = None,
    inversion_solver: Annotated[str | None, typer.Option(help=SOLVER_HELP)] = None,
    attn_injection: Annotated[str | None, typer.Option(help=ATTN_INJECTION_HELP)] = None,
    fix_source_frame: Annotated[
        bool | None, typer.Option(help="consisti2v: source branch on the source frame (official: the edited one).")
    ] = None,
    init_step: Annotated[int | None, typer.Option(help="First sampling step index.")] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed; each sample's seed derives from it.")] = None,
    fps: Annotated[float | None, typer.Option(help="Resample clips to this fps.")] = None,
    frames: Annotated[str | None, typer.Option(help=FRAMES_HELP)] = None,
    max_frames: Annotated[int | None, typer.Option(help=MAX_FRAMES_HELP)] = None,
    too_long: Annotated[str | None, typer.Option(help=TOO_LONG_HELP)] = None,
    window_frames: Annotated[int | None, typer.Option(help=WINDOW_FRAMES_HELP)] = None,
    window_overlap: Annotated[int | None, typer.Option(help=WINDOW_OVERLAP_HELP)] = None,
    window_max_frames: Annotated[int | None, typer.Option(help=WINDOW_MAX_FRAMES_HELP)] = None,
    window_match_stats: Annotated[float | None, typer.Option(help=WINDOW_MATCH_HELP)] = None,
    window_blend: Annotated[str | None, typer.Option(help=WINDOW_BLEND_HELP)] = None,
    width: Annotated[int | None, typer.Option(help="Width (multiple of 8).")] = None,
    height: Annotated[int | None, typer.Option(help="Height (multiple of 8).")] = None,
    resize: Annotated[str | None, typer.Option(help="stretch, crop or pad.")] = None,
    backbone: Annotated[
        str | None, typer.Option(help="i2vgen-xl, consisti2v, seine or wan2.2-ti2v (every variant; its defaults).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Hub id or local folder of the backbone.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray address (default: RAY_ADDRESS, else a local Ray).")] = None,
    inversions: Annotated[
        str | None, typer.Option(help="Store of inversions: `invert` writes it, `run` reuses what it holds.")
    ] = None,
    redo_changed: Annotated[
        bool | None,
        typer.Option(
            "--redo-changed", help="Recompute and replace outputs a variant made with other settings (else refused)."
        ),
    ] = None,
    evaluate: Annotated[bool | None, typer.Option("--evaluate", help=EVALUATE_HELP)] = None,
    evaluate_model: Annotated[str | None, typer.Option(help=EVALUATE_MODEL_HELP)] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any job field: PATH=VALUE, e.g. pools.sampler.size=4.")
    ] = None,
    progress_every: Annotated[float, typer.Option("--progress-every", min=1.0, help=PROGRESS_EVERY_HELP)] = 30.0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors (no progress line).")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Run (or resume) a batch job over WebDataset shards on Ray."""
    _job_command("edit", **locals())


@app.command("invert", help="Invert every clip of a job into its `inversions` store (resumable), for later runs.")
@functools.wraps(run)  # `invert` takes exactly the flags of `run`
def invert_command(**params) -> None:
    _job_command("invert", **params)


def _job_command(mode: str, *, job_file, input, set_, editor_option, progress_every, quiet, debug, **flags) -> None:
    """`run` and `invert`: the job file plus the flags that override it, validated, then run on Ray."""
    _DEBUG["on"] = debug
    if debug:  # Ray's own console notices too (pipelines/anyv2v_job.init_ray)
        os.environ["ANYV2V_DEBUG"] = "1"
    from .job import load_job, parse_set

    overrides: dict = parse_set(set_ or [])
    overrides |= {f"editor.options.{k}": v for k, v in parse_set(editor_option or [], "--editor-option").items()}
    evaluate = flags.pop("evaluate", None)
    flags["frames"] = _frames(flags.get("frames"))
    for k, v in flags.items():
        if v is not None:  # a flag may set several fields (--shift: the edit's and the inversion's grid)
            fields = RUN_FLAGS[k] if isinstance(RUN_FLAGS[k], tuple) else (RUN_FLAGS[k],)
            overrides |= dict.fromkeys(fields, v)
    if evaluate or flags.get("evaluate_model"):  # on: the job's mode, else flag with thresholds, else score
        overrides["evaluate.mode"] = parse_set(set_ or []).get("evaluate.mode", "on")
    if input:
        overrides["input"] = list(input)
    job = load_job(job_file, overrides, mode)

    from .pipelines.anyv2v_job import run_job
    from .pipelines.progress import ProgressDisplay

    display = ProgressDisplay(stream=None if quiet else sys.stderr, every=progress_every)
    summary = run_job(job, log=lambda m: _say(quiet, m), mode=mode, display=display)
    for example in summary.error_examples:
        _say(quiet, f"  error: {example}")
    _say(quiet, summary.utilisation_line())
    _say(quiet, summary.line())
    if summary.unusable_store_shards:  # damaged stored inversions were recomputed: the store is mended too
        from .pipelines.verify import mend_store

        mend_store(job, summary.unusable_store_shards, log=lambda m: _say(quiet, m))


@app.command()
def score(
    output: Annotated[str, typer.Argument(help="An output folder or URL that `run` wrote.")],
    job_file: Annotated[
        Path | None, typer.Option("--job", help="Job file: its `evaluate:` and `pools:` apply; flags override.")
    ] = None,
    evaluate_model: Annotated[str | None, typer.Option(help=EVALUATE_MODEL_HELP)] = None,
    input: Annotated[
        list[str] | None,
        typer.Option("--input", help="Clips edited by another tool (WebDataset shards; repeatable): OUT is new."),
    ] = None,
    sources: Annotated[
        list[str] | None,
        typer.Option(
            "--sources",
            help="The source shards: where they are now if moved (matched by file name), or, with --input, "
            "those of the edited clips (matched by key). Repeatable.",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="With --input: the variant name of the edited clips.")] = "edited",
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray address (default: RAY_ADDRESS, else a local Ray).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="evaluate.* or pools.scorer.* field: PATH=VALUE, e.g. evaluate.mode=route."),
    ] = None,
    progress_every: Annotated[float, typer.Option("--progress-every", min=1.0, help=PROGRESS_EVERY_HELP)] = 30.0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Score (or rescore, with another model or thresholds) an existing output in place: new score columns,
    pairs re-routed per shard, atomically and resumably; no clip is made again."""
    _DEBUG["on"] = debug
    from .job import load_job, parse_set

    overrides: dict = parse_set(set_ or [])
    overrides.setdefault("evaluate.mode", "on")
    given = {"evaluate.model": evaluate_model, "device": device, "ray.address": address, "output": output}
    if input:
        given["input"] = list(input)
        from .job import VARIANT_NAME

        if not VARIANT_NAME.match(name):
            raise AnyV2VError(f"--name must be letters, digits, '-' or '_', got {name!r}")
    overrides |= {k: v for k, v in given.items() if v is not None}
    job = load_job(job_file, overrides, mode="score")

    from .pipelines.progress import ProgressDisplay
    from .pipelines.score_job import run_score

    display = ProgressDisplay(stream=None if quiet else sys.stderr, every=progress_every)
    summary = run_score(job, log=lambda m: _say(quiet, m), sources=tuple(sources or ()), display=display, name=name)
    _say(quiet, summary.line())


@app.command()
def verify(
    output: Annotated[str | None, typer.Argument(help="An output folder or URL that `run` wrote.")] = None,
    inversions: Annotated[
        str | None, typer.Option("--inversions", help="An inversions store that `invert` wrote (also checked).")
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remake the damaged pairs with the settings their rows record (byte-identical to a fresh run), "
            "drop damaged inversions and extra members, remove leftovers; then verify again.",
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="--repair: auto, cpu or cuda.")] = None,
    address: Annotated[
        str | None, typer.Option(help="--repair: Ray address (default: RAY_ADDRESS, else local).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="--repair: pools.*, limits.*, share_model; e.g. share_model=true")
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only the summary lines and problems.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Check every member of an output (or inversions store) against the SHA-256 its row records, every ok
    row against its members, and look for leftovers; exit 1 when anything is damaged."""
    _DEBUG["on"] = debug
    from .job import parse_set
    from .pipelines.verify import repair_output, verify_output

    targets = [t for t in (output, inversions) if t]
    if not targets:
        raise AnyV2VError("give an output folder / URL to verify, or --inversions STORE (or both)")
    flags = parse_set(set_ or []) | {k: v for k, v in (("device", device), ("ray.address", address)) if v}
    damaged = False
    for target in targets:
        result = verify_output(target)
        typer.echo(result.line())
        if not result.clean:
            typer.echo(result.table())
        if repair and not result.clean:
            summary = repair_output(target, result, flags, log=lambda m: _say(quiet, m))
            typer.echo(summary.line())
            result = verify_output(target)
            typer.echo(result.line())
            if not result.clean:
                typer.echo(result.table())
        damaged |= not result.clean
    if damaged:
        raise typer.Exit(1)


def _oom_message(e: BaseException) -> str | None:
    text = str(e)
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return "out of GPU memory; use --dtype float16, a smaller --width/--height or fewer --frames, or free the GPU"
    if isinstance(e, MemoryError) or "can't allocate memory" in text:
        return "out of memory; use a smaller --width/--height or fewer --frames"
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every failure into one line and an exit status."""
    try:
        code = app(args=argv, standalone_mode=False)  # click returns a typer.Exit's code here
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except _UsageError as e:
        command = e.ctx.command_path if e.ctx else "anyv2v-batch"
        typer.echo(f"error: {e.format_message()} (see `{command} --help`)", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except AnyV2VError as e:
        if _DEBUG["on"]:
            traceback.print_exc()
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line unless --debug
        if _DEBUG["on"]:
            traceback.print_exc()
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        message = _oom_message(e) or (
            f"internal error: {type(e).__name__}: {detail} (rerun with --debug for the traceback)"
        )
        typer.echo(f"error: {message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
