"""Pool sizing by cost and utilisation figures."""

from __future__ import annotations

from anyv2v_batch.job import build_job
from anyv2v_batch.pipelines.balance import clip_cost, source_steps, split_gpus, utilisation
from anyv2v_batch.settings import EditSettings

BASE = {"input": "x.tar", "output": "o"}


def test_source_steps_follow_the_injection_windows():
    assert source_steps(EditSettings()) == 25  # temporal injects for 50% of 50 steps
    assert source_steps(EditSettings(pnp_conv=0, pnp_spatial=0, pnp_temporal=0)) == 0
    assert source_steps(EditSettings(init_step=10)) == 15  # official windows: 10 injected steps dropped
    assert source_steps(EditSettings(init_step=10, injection_window="from-start")) == 25
    assert source_steps(EditSettings(pnp_temporal=1.0, init_step=5)) == 45


def test_costs_and_split_at_official_defaults():
    one = build_job(BASE)
    two = build_job({**BASE, "variants": [{"name": "a"}, {"name": "b", "edit": {"guidance_scale": 1.0}}]})
    assert (clip_cost(one).inversion, clip_cost(one).sampler) == (500, 25 + 50 * 2)
    assert clip_cost(two).sampler == 25 + 50 * 2 + 50 * 1  # one shared source; b has no negative branch
    assert split_gpus(one, 8) == (6, 2)  # 500 : 125
    assert split_gpus(one, 1) == (1, 1) and sum(split_gpus(two, 16)) == 16
    assert split_gpus(build_job({**BASE, "inversion": {"steps": 50}}), 4) == (1, 3)


def test_utilisation_is_busy_time_over_actor_time():
    u = utilisation({"inversion": 30.0, "sampler": 10.0}, 20.0, {"inversion": 2, "sampler": 1, "editor": 1})
    assert u == {"inversion": 0.75, "sampler": 0.5, "editor": 0.0}
