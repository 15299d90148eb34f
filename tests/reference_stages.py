"""Run one official reference case through our engine stage by stage; report the relative errors.

Each stage starts from the *reference's* input to that stage, so an error points at the stage that
made it: conditioning, VAE encoding, inversion (from the reference `video_latents_0`), the edit (from
the reference inverted latents: the latent entering every UNet call, then the final latents), and
decoding (of the reference final latents).
"""

from __future__ import annotations

import time

import torch
from conftest import ReferenceCase, rel_err

from anyv2v_batch.inversion import guided_prediction, inversion_branches, invert
from anyv2v_batch.pnp_edit import edit, edit_branches, prepare_first_frame
from anyv2v_batch.schedule import set_schedule

COND_KEYS = ("encoder_hidden_states", "image_embeddings", "image_latents", "fps")


LONG_CHAIN = 100  # inversion steps above which the chain is checked in segments (case-d: 500)


def inversion_segment_errors(backbone, rc: ReferenceCase) -> float:
    """A long inversion chain checked where it starts, in its middle and where it ends, each segment from
    the official latent that enters it to the next recorded one (the first from the clean latents): the
    same steps as the whole chain, without its 500 UNet calls (the loop itself runs whole on the other
    cases). Also the schedule: our inverse scheduler's timesteps are the official ones."""
    c, ref, settings = rc.case, rc.ref, rc.inversion_settings()
    scheduler = backbone.scheduler(inverse=True)
    timesteps = [int(t) for t in set_schedule(scheduler, settings.steps, "--inversion-steps")]
    assert timesteps == c["inversion_timesteps"]
    cond = backbone.condition(inversion_branches(rc.frames[0], settings), c["n_frames"], c["fps"])
    recorded = [timesteps.index(t) for t in rc.recorded_inversion_timesteps]  # ascending step indices
    middle = len(recorded) // 2
    segments = [(-1, recorded[0]), (recorded[0], recorded[1]), (recorded[middle], recorded[middle + 1]),
                (recorded[-2], recorded[-1])]  # fmt: skip
    worst = 0.0
    for start, end in segments:
        x = ref["video_latents_0"] if start < 0 else ref[f"inverted/{timesteps[start]}"]
        for t in timesteps[start + 1 : end + 1]:
            x = scheduler.step(guided_prediction(backbone, x, t, cond, settings.guidance_scale), t, x).prev_sample
        worst = max(worst, rel_err(x, ref[f"inverted/{timesteps[end]}"]))
    return worst


def stage_errors(backbone, rc: ReferenceCase) -> dict:
    c, ref = rc.case, rc.ref
    n, fps = c["n_frames"], c["fps"]
    width, height = c["width"], c["height"]
    errors: dict[str, float] = {}

    cond = backbone.condition(inversion_branches(rc.frames[0], rc.inversion_settings()), n, fps)
    errors |= {f"inversion/{k}": rel_err(cond[k], ref[f"inversion/{k}"]) for k in COND_KEYS}
    ref_inversion = rc.reference_inversion()
    edited = prepare_first_frame(rc.edited, width, height)
    cond = backbone.condition(edit_branches(backbone, ref_inversion, edited, rc.edit_settings()), n, fps)
    errors |= {f"edit/{k}": rel_err(cond[k], ref[f"edit/{k}"]) for k in COND_KEYS}

    errors["video_latents_0"] = rel_err(backbone.encode_video(rc.frames), ref["video_latents_0"])

    t0 = time.perf_counter()
    if len(c["inversion_timesteps"]) > LONG_CHAIN:
        errors["inverted (worst timestep)"] = inversion_segment_errors(backbone, rc)
    else:
        inverted: dict[int, torch.Tensor] = {}
        invert(
            backbone,
            rc.frames,
            rc.inversion_settings(),
            fps=fps,
            latents=ref["video_latents_0"],
            on_step=lambda i, t, x: inverted.__setitem__(t, x.clone()),
        )
        assert sorted(inverted) == c["inversion_timesteps"]
        errors["inverted (worst timestep)"] = max(
            rel_err(inverted[t], ref[f"inverted/{t}"]) for t in rc.recorded_inversion_timesteps
        )
    seconds_inversion = time.perf_counter() - t0

    entering: dict[tuple[int, int], torch.Tensor] = {}
    t0 = time.perf_counter()
    result = edit(
        backbone,
        ref_inversion,
        rc.edited,
        rc.edit_settings(),
        decode=False,
        on_step=lambda i, t, x: entering.__setitem__((i, t), x.clone()),
    )
    seconds_edit = time.perf_counter() - t0
    assert [t for _, t in sorted(entering)] == c["edit_timesteps"]
    errors["edit/unet_input (worst call)"] = max(
        rel_err(x, ref[f"edit/unet_input/{i:03d}_t{t}"]) for (i, t), x in entering.items()
    )
    errors["edit/final_latents"] = rel_err(result.latents, ref["edit/final_latents"])
    errors["edit/decoded_video"] = rel_err(backbone.decode_video(ref["edit/final_latents"]), ref["edit/decoded_video"])
    return {
        "errors": errors,
        "injected": result.injected,
        "run_timesteps": result.timesteps,
        "seconds": {"inversion": seconds_inversion, "edit": seconds_edit},
    }
