"""Wan2.2 TI2V inversion and injected sampling on the tiny recorded model (flow_edit.py): the inversion
converges at its solver's order, the source branch is untouched by the edit's, each injection fraction
fires at exactly the steps it names, and injection moves the edit toward the source."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import moving_clip
from wan_tiny import tiny_wan

from anyv2v_batch.backbones.wan_ti2v import WanTI2V, generate, pad_prompts, pin_first_frame
from anyv2v_batch.flow import sampling_grid
from anyv2v_batch.flow_edit import FlowEditSettings, edit, invert


@pytest.fixture(scope="module")
def clip_latents():
    wan = tiny_wan()
    g = torch.Generator().manual_seed(0)
    source = wan.encode_video(moving_clip(9, 64, 64, seed=1))
    edited = wan.encode_video(moving_clip(1, 64, 64, seed=2))
    prompts = [pad_prompts([torch.randn(n, 16, generator=g)]) for n in (4, 6, 3)]
    return source, edited, prompts  # prompts: inversion (source), edit, negative


def time_smooth(wan: WanTI2V) -> WanTI2V:
    """The tiny model with only the slow part of its time response: the random time MLP gives full weight
    to sinusoids up to 1 rad per timestep, so its velocity oscillates between neighbouring timesteps (a
    trained model's does not) and no solver reaches its order at practical step counts. Zeroing the
    columns of frequencies above ~1e-3 rad per timestep leaves a velocity smooth in t."""
    transformer = copy.deepcopy(wan.transformer)
    linear = transformer.condition_embedder.time_embedder.linear_1
    half = linear.weight.shape[1] // 2  # [cos | sin], frequency 10000^(-k / half) at column k
    with torch.no_grad():
        linear.weight[:, :100] = 0
        linear.weight[:, half : half + 100] = 0
    return WanTI2V(transformer, wan.vae)


def test_inversion_converges_at_the_solver_order(clip_latents):
    source, _, (context, _, _) = clip_latents
    wan = time_smooth(tiny_wan())
    fine = invert(wan, source, context, 256, 5.0, "midpoint")[0]  # its own error: ~7e-6 relative

    def error(steps, solver):
        return float((invert(wan, source, context, steps, 5.0, solver)[0] - fine).norm() / fine.norm())

    euler = [error(16, "euler"), error(64, "euler")]
    midpoint = [error(16, "midpoint"), error(64, "midpoint")]
    # 4x the steps: about 1/4 of the error for Euler (measured 3.8x), about 1/16 for the midpoint (15x)
    assert 3.0 < euler[0] / euler[1] < 5.0
    assert 11.0 < midpoint[0] / midpoint[1] < 22.0
    assert midpoint[1] < euler[1] / 20


def test_sampling_back_the_inversion_reproduces_the_source(clip_latents):
    source, _, (context, _, _) = clip_latents
    wan = time_smooth(tiny_wan())
    plain = FlowEditSettings(steps=64, shift=5.0, guidance=1.0, pnp_attn=0, pnp_feature=0)
    first = source[:, :, :1]

    def reconstruction_error(solver):
        out = edit(wan, invert(wan, source, context, 64, 5.0, solver), first, first, context, context, context, plain)
        assert torch.equal(out[:, :, :1], first)  # the first frame is pinned
        return float((out[:, :, 1:] - source[:, :, 1:]).norm() / source[:, :, 1:].norm())

    euler, midpoint = reconstruction_error("euler"), reconstruction_error("midpoint")
    assert midpoint < 2e-3 < euler < 0.05  # measured 4.6e-4 and 1.1e-2


def test_no_injection_is_plain_sampling_from_the_inversion(clip_latents):
    source, edited, (src_ctx, ctx, neg) = clip_latents
    wan = tiny_wan()
    inverted = invert(wan, source, src_ctx, 6, 5.0)
    settings = FlowEditSettings(steps=6, pnp_attn=0, pnp_feature=0)
    fired = []
    out = edit(wan, inverted, edited, source[:, :, :1], ctx, neg, src_ctx, settings, injector_out=fired)
    assert fired == [set()]
    plain = generate(wan, inverted[:1], edited, ctx, neg, 6, settings.shift, settings.guidance)
    assert torch.equal(out, plain)


def test_each_fraction_fires_at_exactly_its_steps_and_the_source_branch_is_its_own(clip_latents):
    source, edited, (src_ctx, ctx, neg) = clip_latents
    wan = tiny_wan()
    steps = 8
    inverted = invert(wan, source, src_ctx, steps, 5.0)
    settings = FlowEditSettings(steps=steps, pnp_attn=0.5, pnp_feature=0.25)
    _, timesteps = sampling_grid(steps, settings.shift)
    seen, fired = {}, []

    def on_step(i, t, x, source_v):
        seen[i] = source_v

    edit(wan, inverted, edited, source[:, :, :1], ctx, neg, src_ctx, settings, on_step, injector_out=fired)
    t = timesteps.tolist()
    assert fired[0] == {("attention", i) for i in range(4)} | {("feature", i) for i in range(2)}
    for i in range(steps):
        if i >= 4:
            assert seen[i] is None  # nothing injects: no source call
            continue
        alone = wan.velocity(pin_first_frame(inverted[i : i + 1], source[:, :, :1]), t[i], src_ctx)
        assert torch.equal(seen[i], alone)  # bit-identical with and without the edit's branches


def test_injection_changes_the_edit_and_with_the_source_frame_keeps_the_reconstruction(clip_latents):
    """On random weights injection cannot be judged by its effect (the organism does that); here: every
    kind changes the output, keeping the first frame's own Q/K is a different edit, and with the source's
    own first frame and prompt full injection stays on the reconstruction (the Q/K and features it
    injects are the inversion's, which the reconstruction tracks)."""
    source, edited, (src_ctx, ctx, neg) = clip_latents
    wan = tiny_wan()
    inverted = invert(wan, source, src_ctx, 8, 5.0)
    first = source[:, :, :1]

    def run(frame=edited, context=ctx, **kw):
        s = FlowEditSettings(steps=8, **kw)
        return edit(wan, inverted, frame, first, context, neg, src_ctx, s)

    none = run(pnp_attn=0, pnp_feature=0)
    attn, feature = run(pnp_attn=1, pnp_feature=0), run(pnp_attn=0, pnp_feature=1)
    own_first = run(pnp_attn=1, pnp_feature=0, attn_first_frame=False)
    for other in (attn, feature, own_first):
        assert not torch.equal(other[:, :, 1:], none[:, :, 1:])
    assert not torch.equal(own_first, attn)
    for out in (attn, feature, own_first):
        assert torch.equal(out[:, :, :1], edited)
    recon = run(first, src_ctx, guidance=1.0, pnp_attn=0, pnp_feature=0)
    injected = run(first, src_ctx, guidance=1.0, pnp_attn=1, pnp_feature=1)
    assert 0 < float((injected - recon).norm() / source.norm()) < 0.01


def test_feature_injection_keeps_the_first_frame_tokens_own():
    from anyv2v_batch.injection import overwrite_branches

    output = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # [branches, tokens, channels]
    own = output.clone()
    source = -torch.ones(1, 5, 3)
    overwrite_branches(output, source, keep=2)
    assert torch.equal(output[:, :2], own[:, :2])
    assert torch.equal(output[:, 2:], source[:, 2:].expand(2, -1, -1))


def test_kv_sharing_attends_over_both_branches_and_is_exact_where_they_agree(clip_latents):
    """One softmax over [own; source] keys: where the source branch's K/V equal the edit's own (the same
    latent, frame and prompt), every key counts twice and the attention is unchanged (to rounding);
    where they differ, the edit changes; it fires at exactly the attention window's steps."""
    from anyv2v_batch.kv_sharing import SharedKV

    source, edited, (src_ctx, ctx, neg) = clip_latents
    wan = tiny_wan()
    x = pin_first_frame(source.clone(), source[:, :, :1])
    with SharedKV(wan.transformer, range(len(wan.transformer.blocks))) as kv:
        kv.record()
        own = wan.velocity(x, 700, src_ctx)
        kv.share(0)
        shared = wan.velocity(torch.cat([x, x]), 700, torch.cat([src_ctx, src_ctx]))
        kv.off()
        assert kv.fired == {0}
    assert float((shared[:1] - own).abs().max() / own.abs().max()) < 1e-5
    inverted = invert(wan, source, src_ctx, 8, 5.0)
    fired = []
    run = {
        mode: edit(
            wan,
            inverted,
            edited,
            source[:, :, :1],
            ctx,
            neg,
            src_ctx,
            FlowEditSettings(steps=8, pnp_attn=0.5, pnp_feature=0, attn_injection=mode),
            injector_out=fired,
        )  # fmt: skip
        for mode in ("qk", "kv")
    }
    assert fired[1] == {("attention", i) for i in range(4)}
    none = edit(
        wan, inverted, edited, source[:, :, :1], ctx, neg, src_ctx, FlowEditSettings(steps=8, pnp_attn=0, pnp_feature=0)
    )
    assert not torch.equal(run["kv"], none) and not torch.equal(run["kv"], run["qk"])
