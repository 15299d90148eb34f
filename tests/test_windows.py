"""Clips longer than one window: the window plan, joining windows, seams and statistics matching (pure),
the frame count of `frames: all`, and decoding only the frames a window needs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import moving_clip

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.settings import ClipSettings, WindowSettings
from anyv2v_batch.video_io import encode_mp4, read_video, video_length
from anyv2v_batch.windows import (
    Window,
    WindowLimits,
    assemble,
    clip_total,
    latent_stats,
    match_stats,
    plan_for,
    plan_windows,
    resolve_limits,
    seam_steps,
    window_seed,
)


@pytest.mark.parametrize("frames,overlap", [(16, 1), (16, 4), (8, 7), (2, 1), (24, 8)])
def test_the_plan_covers_every_frame_once_and_ends_with_the_clip(frames, overlap):
    for total in range(frames + 1, 300):
        plan = plan_windows(total, frames, overlap, max_frames=frames)
        assert plan == plan_windows(total, frames, overlap, max_frames=frames)  # deterministic
        assert [w.index for w in plan] == list(range(len(plan)))
        assert all(w.frames == frames for w in plan)
        assert plan[0].start == 0 and plan[0].written_from == 0
        assert plan[-1].end == total  # the last window is aligned to the clip's end, never padded
        written = [i for w in plan for i in range(w.written_from, w.end)]
        assert written == list(range(total))  # every output frame exactly once, in order
        for before, after in zip(plan, plan[1:], strict=False):
            assert after.written_from == before.end
            assert before.end - after.start >= overlap  # never less overlap than asked for
            assert after.start > before.start
        # only the last window may overlap more (it is pulled back to end with the clip)
        assert all(plan[i + 1].start - plan[i].start == frames - overlap for i in range(len(plan) - 2))


def test_the_plan_examples():
    assert plan_windows(40, 16, 1, 16) == (Window(0, 0, 16, 0), Window(1, 15, 16, 16), Window(2, 24, 16, 31))
    assert plan_windows(31, 16, 1, 16) == (Window(0, 0, 16, 0), Window(1, 15, 16, 16))  # exact fit
    assert plan_windows(16, 16, 1, 16) == (Window(0, 0, 16, 0),)
    assert plan_windows(100, 16, 1, 128) == (Window(0, 0, 100, 0),)  # one long window where the model takes it
    assert plan_windows(10, 16, 1, 16) == (Window(0, 0, 10, 0),)  # a short clip: one window of its length
    # 10 s at 8 fps
    assert [w.start for w in plan_windows(80, 16, 1, 16)] == [0, 15, 30, 45, 60, 64]
    with pytest.raises(ValueError):
        plan_windows(40, 16, 16, 16)


def test_limits_per_backbone_and_refusals():
    i2v = WindowLimits(16, 128)
    assert resolve_limits(i2v, WindowSettings(), "i2vgen-xl") == WindowLimits(16, 128)
    assert resolve_limits(i2v, WindowSettings(frames=24, max_frames=48), "i2vgen-xl") == WindowLimits(24, 48)
    # an explicit window length alone: a 41-frame clip, though it fits the backbone's one-window 128, is
    # chained in windows of 16 (it used to run as one 41-frame window, the setting silently doing nothing)
    honoured = resolve_limits(i2v, WindowSettings(frames=16), "i2vgen-xl")
    assert honoured == WindowLimits(16, 16)
    assert [(w.start, w.frames) for w in plan_for(41, honoured, WindowSettings(frames=16))] == [
        (0, 16),
        (15, 16),
        (25, 16),
    ]
    assert len(plan_for(16, honoured, WindowSettings(frames=16))) == 1
    exact = WindowLimits(16, 16, exact=True)
    with pytest.raises(AnyV2VError, match="exactly 16 frames"):
        resolve_limits(exact, WindowSettings(frames=8), "consisti2v")
    with pytest.raises(AnyV2VError, match="longer than --window-max-frames"):
        resolve_limits(i2v, WindowSettings(frames=32, max_frames=20), "i2vgen-xl")
    with pytest.raises(AnyV2VError, match="fewer than the 16"):
        plan_for(12, resolve_limits(exact, WindowSettings(), "consisti2v"), WindowSettings())
    with pytest.raises(AnyV2VError, match="window-overlap"):
        WindowSettings(frames=8, overlap=8).validate()


def test_frames_all_counts_and_caps():
    clip = ClipSettings(frames="all", max_frames=30)
    assert clip_total(clip, 25, 3.1) == (25, False)
    with pytest.raises(AnyV2VError, match="more than clip.max_frames 30"):
        clip_total(clip, 31, 12.0)
    assert clip_total(ClipSettings(frames="all", max_frames=30, too_long="truncate"), 31, 12.0) == (30, True)
    assert clip_total(ClipSettings(frames=12), 999, 99.0) == (12, False)
    with pytest.raises(AnyV2VError, match="at least 2"):
        clip_total(ClipSettings(frames="all"), 1, 0.1)


def test_window_seeds():
    assert window_seed(8888, 0) == 8888  # window 1 is the ordinary edit
    seeds = {window_seed(8888, k) for k in range(1, 50)}
    assert len(seeds) == 49 and all(0 <= s < 2**63 for s in seeds) and 8888 not in seeds


def test_assemble_keeps_the_earlier_window_or_crossfades():
    plan = plan_windows(10, 6, 2, 6)  # [0, 6) [4, 10)
    a = np.full((6, 2, 2, 3), 100, np.uint8)
    b = np.full((6, 2, 2, 3), 200, np.uint8)
    clip = assemble([a, b], plan)
    assert clip.shape == (10, 2, 2, 3)
    assert (clip[:6] == 100).all() and (clip[6:] == 200).all()  # overlap frames 4, 5 from the earlier
    mixed = assemble([a, b], plan, "linear")
    assert (mixed[:4] == 100).all() and (mixed[6:] == 200).all()
    assert mixed[4, 0, 0, 0] == round(100 + (200 - 100) / 3) and mixed[5, 0, 0, 0] == round(100 + (200 - 100) * 2 / 3)


def test_seam_steps_see_a_jump_at_a_join():
    plan = plan_windows(20, 8, 1, 8)  # joins before frames 8 and 15
    ramp = np.stack([np.full((4, 4, 3), 10 + 3 * i, np.uint8) for i in range(20)])
    assert seam_steps(ramp, plan) == pytest.approx([1.0, 1.0])  # a smooth clip: a join is like any step
    jumped = ramp.copy()
    jumped[15:] = np.clip(jumped[15:].astype(int) + 30, 0, 255).astype(np.uint8)
    steps = seam_steps(jumped, plan)
    assert steps[0] == pytest.approx(1.0) and steps[1] == pytest.approx(11.0)  # (3 + 30) / 3
    assert seam_steps(ramp[:8], plan_windows(8, 8, 1, 8)) == []


def test_statistics_matching_invariants():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 4, 5, 6, 6, generator=g) * torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1, 1)
    drifted = torch.randn(1, 4, 5, 6, 6, generator=g) * 0.5 + 3
    stats = latent_stats(reference)
    assert torch.equal(match_stats(drifted, stats, 0.0), drifted)  # off: unchanged
    full = match_stats(drifted, stats, 1.0)
    mean, std = latent_stats(full)
    assert torch.allclose(mean, stats[0], atol=1e-5) and torch.allclose(std, stats[1], atol=1e-4)
    half = latent_stats(match_stats(drifted, stats, 0.5))[0]
    assert torch.allclose(half, (latent_stats(drifted)[0] + stats[0]) / 2, atol=1e-5)


def test_frames_all_is_counted_from_the_index_and_a_window_decodes_only_its_frames():
    clip = moving_clip(45, 32, 32)
    data = encode_mp4(clip, 8)
    length = video_length(data, 8.0, 1000)
    assert (length.frames, length.source_frames, length.seconds) == (45, 45, pytest.approx(45 / 8))
    assert video_length(data, 4.0, 1000).frames == 23  # every other frame: 0, 2, ..., 44
    assert video_length(data, 8.0, 20).frames == 20  # counted only up to the limit asked for
    whole = read_video(io.BytesIO(data), 45, 8, 32, 32).frames
    for decoder in ("decord", "pyav"):
        part = read_video(io.BytesIO(data), 16, 8, 32, 32, decoder=decoder, start=24).frames
        assert np.array_equal(part, whole[24:40])
    half = read_video(io.BytesIO(data), 5, 4, 32, 32, start=10).frames
    assert np.array_equal(half, whole[20:30:2])
    with pytest.raises(AnyV2VError, match="too short"):
        read_video(io.BytesIO(data), 16, 8, 32, 32, start=30)


@pytest.mark.slow
def test_decoding_a_long_source_holds_one_window_at_a_time(tmp_path):
    """Peak memory of the decode stage on a 25 s source (600 frames, 320x240 at 24 fps: 132 MiB of frames)
    edited whole (`frames: all` at 8 fps: 200 frames) in windows of 16: about one window's decoding, never
    the whole clip."""
    clip = np.zeros((600, 240, 320, 3), np.uint8)
    for i in range(600):  # a moving bar on a gradient: cheap to encode
        clip[i, :, :, 0] = np.linspace(0, 255, 320, dtype=np.uint8)[None]
        clip[i, :, (i * 3) % 300 : (i * 3) % 300 + 20] = 255
    (tmp_path / "long.mp4").write_bytes(encode_mp4(clip, 24))
    whole = clip.nbytes
    del clip
    script = textwrap.dedent(
        f"""
        import io, json, resource
        from anyv2v_batch.job import EditorSpec
        from anyv2v_batch.operators.decode import decode_clip, window_limits
        from anyv2v_batch.operators.work import ClipWork, VariantWork
        from anyv2v_batch.settings import ClipSettings, EditSettings, InversionSettings, WindowSettings
        from anyv2v_batch.video_io import read_video
        data = open({str(tmp_path / "long.mp4")!r}, "rb").read()
        read_video(io.BytesIO(data), 2, 8, 64, 48)  # libraries loaded and warm before the baseline
        window_limits("i2vgen-xl", None, WindowSettings(max_frames=16))  # imports torch and the backbones
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        work = ClipWork(shard="s", shard_id="s", key="long", meta={{}}, files={{}}, video=data, video_ext="mp4",
                        clip=ClipSettings(frames="all", fps=8, width=64, height=48),
                        inversion_settings=InversionSettings(),
                        variants=[VariantWork("v", EditSettings(), EditorSpec())],
                        window_settings=WindowSettings(max_frames=16))
        rows = [r["work"] for r in decode_clip({{"work": work}})]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"rise": peak - before, "windows": [(w.window.start, len(w.frames)) for w in rows],
                          "errors": [w.error for w in rows], "seconds": rows[0].source["seconds"]}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    plan = plan_windows(200, 16, 1, 16)
    assert result["windows"] == [[w.start, 16] for w in plan] and len(plan) == 14
    assert result["errors"] == [""] * 14 and result["seconds"] == 25.0
    print(f"decode peak rise {result['rise'] / 2**20:.0f} MiB; the whole source {whole / 2**20:.0f} MiB")
    assert result["rise"] < whole / 4


def test_window_settings_a_backbone_cannot_run_are_refused_before_work(tmp_path, capsys):
    from conftest import TINY_MODEL
    from test_cli import run_cli

    out = tmp_path / "out"
    base = ["run", "--input", tmp_path / "none.tar", "--output", out, "--model", TINY_MODEL, "--frames", "all"]
    code, err = run_cli([*base, "--window-overlap", "16"], capsys)
    assert code == 1 and "--window-overlap 16 must be below the window length 16" in err and not out.exists()
    code, err = run_cli([*base, "--window-frames", "32", "--window-max-frames", "20"], capsys)
    assert code == 1 and "--window-frames 32 is longer than --window-max-frames 20" in err and not out.exists()
    code, err = run_cli([*base[:-1], "twenty"], capsys)
    assert code == 1 and "--frames must be an integer >= 2 or 'all', got 'twenty'" in err and not out.exists()
    code, err = run_cli([*base, "--too-long", "cut"], capsys)
    assert code == 1 and "clip.too_long must be one of error, truncate" in err and not out.exists()


def test_a_source_over_the_cap_is_an_error_row_naming_it():
    from anyv2v_batch.job import EditorSpec
    from anyv2v_batch.operators.decode import decode_clip
    from anyv2v_batch.operators.work import ClipWork, VariantWork
    from anyv2v_batch.settings import EditSettings, InversionSettings

    data = encode_mp4(moving_clip(40, 32, 32), 8)

    def decoded(**clip):
        work = ClipWork(
            shard="s", shard_id="s", key="k", meta={}, files={}, video=data, video_ext="mp4",
            clip=ClipSettings(fps=8, width=32, height=32, **clip), inversion_settings=InversionSettings(),
            variants=[VariantWork("v", EditSettings(), EditorSpec())], window_settings=WindowSettings(max_frames=16),
        )  # fmt: skip
        return [r["work"] for r in decode_clip({"work": work})]

    [capped] = decoded(frames="all", max_frames=30)
    assert "more than clip.max_frames 30" in capped.error and capped.frames is None
    cut = decoded(frames="all", max_frames=30, too_long="truncate")
    assert [(w.window.start, w.error, w.truncated, w.total) for w in cut] == [(0, "", True, 30), (14, "", True, 30)]
    assert cut[1].source["seconds"] == 5.0
    [whole] = decoded(frames=16)
    assert whole.window is None and whole.frames.shape == (16, 32, 32, 3) and whole.plan == (Window(0, 0, 16, 0),)


def test_gather_joins_a_clips_windows_once_all_have_come_and_passes_others_through():
    from anyv2v_batch.job import EditorSpec
    from anyv2v_batch.operators.gather import WindowGather
    from anyv2v_batch.operators.work import ClipWork, VariantWork
    from anyv2v_batch.settings import EditSettings, InversionSettings

    plan = plan_windows(40, 16, 1, 16)

    def clip(key: str, windowed: bool = True) -> list[ClipWork]:
        work = ClipWork(
            shard="s", shard_id="s", key=key, meta={}, files={}, video=None, video_ext="mp4",
            clip=ClipSettings(frames="all"), inversion_settings=InversionSettings(),
            variants=[VariantWork("v", EditSettings(), EditorSpec())], total=40 if windowed else 16,
            plan=plan if windowed else plan_windows(16, 16, 1, 16),
        )  # fmt: skip
        if not windowed:
            return [work]
        parts = [work.for_window(w) for w in plan]
        for p in parts:
            p.frames = np.full((16, 2, 2, 3), p.window.index, np.uint8)
            p.inversion, p.inversion_source = f"inversion {p.window.index}", "computed"
        return parts

    a, b, short = clip("a"), clip("b"), clip("short", windowed=False)
    b[1].error = "cannot decode 'b.mp4'"
    gather = WindowGather()
    assert gather({"work": [a[2], b[0], short[0]]})["work"] == short  # the one-window clip passes at once
    assert gather({"work": [a[0], b[2]]})["work"] == []
    [joined_a] = gather({"work": [a[1]]})["work"]
    [joined_b] = gather({"work": [b[1]]})["work"]
    assert gather.waiting == {}
    assert joined_a.window is None and joined_a.variants is a[0].variants  # window 1's (edited first frames)
    assert joined_a.windows == ["inversion 0", "inversion 1", "inversion 2"] and joined_a.error == ""
    # the source frames each window adds, in order: 16 of window 1, 15 of window 2, 9 of window 3
    assert [int(f[0, 0, 0]) for f in joined_a.frames] == [0] * 16 + [1] * 15 + [2] * 9
    assert joined_b.error == "window 2 (frames 15-30): cannot decode 'b.mp4'" and joined_b.windows == []


def test_outputs_and_inversions_made_before_windows_existed_stay_valid():
    """A job at the defaults has the fingerprint and inversion id it had before `clip.max_frames`,
    `clip.too_long` and `window:` existed (values computed with that version, commit b32dec8)."""
    from anyv2v_batch.fingerprint import fingerprint, variant_fields
    from anyv2v_batch.job import build_job
    from anyv2v_batch.operators.work import inversion_id

    raw = {"input": "x.tar", "output": "out", "clip": {"frames": 8, "width": 32, "height": 32},
           "variants": [{"name": "a", "prompt": "{caption}"}]}  # fmt: skip
    job = build_job(raw)
    v = job.variants[0]
    assert fingerprint(variant_fields(job, v, "ali-vilab/i2vgen-xl", "w123")) == "5e03529aac933a10"
    assert inversion_id("i2vgen-xl", None, v.clip, v.inversion, "w123") == "inv-5ce251e8e58b01ad"
    windowed = build_job({**raw, "window": {"overlap": 2}})
    assert (
        fingerprint(variant_fields(windowed, windowed.variants[0], "ali-vilab/i2vgen-xl", "w123")) != "5e03529aac933a10"
    )


def test_a_model_of_4k_plus_1_frames_windows_every_clip_without_dropping_a_frame():
    """Wan2.2's windows have 4k + 1 frames: a clip of another length that one window would hold runs as two
    windows of the longest such length (the second ending at the clip's end); a longer clip chains 121s;
    an explicit window length that is not 4k + 1 is refused in one line."""
    limits = resolve_limits(WindowLimits(121, 121, step=4), WindowSettings(), "wan2.2-ti2v")
    plans = {n: [(w.start, w.frames) for w in plan_for(n, limits, WindowSettings())] for n in (9, 10, 50, 130)}
    assert plans == {9: [(0, 9)], 10: [(0, 9), (1, 9)], 50: [(0, 49), (1, 49)], 130: [(0, 121), (9, 121)]}
    with pytest.raises(AnyV2VError, match="the clip has 4 frames; the model needs at least 5"):
        plan_for(4, limits, WindowSettings())
    with pytest.raises(AnyV2VError, match="--window-frames 16 is not one: use 13 or 17"):
        resolve_limits(WindowLimits(121, 121, step=4), WindowSettings(frames=16), "wan2.2-ti2v")
