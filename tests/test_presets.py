"""AnyV2V task presets (subject-driven, identity): where they apply, what beats them, what is refused."""

from __future__ import annotations

import pytest
import yaml

from anyv2v_batch.cli import main
from anyv2v_batch.fingerprint import job_fingerprints
from anyv2v_batch.job import JobError, build_job
from anyv2v_batch.presets import TASK_PRESETS
from anyv2v_batch.settings import EditSettings

BASE = {"input": "shards/{000..009}.tar", "output": "out/"}
PNP = ("init_step", "pnp_conv", "pnp_spatial", "pnp_temporal")


def pnp(edit: EditSettings) -> tuple:
    return tuple(getattr(edit, k) for k in PNP)


def test_the_presets_hold_the_official_entries_values():
    # group_config.json: Subject-Driven-Editing "helmet" 0.2/0.2/1.0, Identity-Manipulation "Jack Ma" 0.8/0.8/1.0,
    # both with ddim_init_latents_t_idx 0; the official template's defaults are 0.2/0.2/0.5 at index 1
    assert pnp(build_job({**BASE, "preset": "subject-driven"}).variants[0].edit) == (0, 0.2, 0.2, 1.0)
    assert pnp(build_job({**BASE, "preset": "identity"}).variants[0].edit) == (0, 0.8, 0.8, 1.0)
    assert pnp(build_job(BASE).variants[0].edit) == (0, 0.2, 0.2, 0.5)
    assert {p.editor for p in TASK_PRESETS.values()} == {"anydoor", "instantid"}


def test_explicit_settings_beat_the_preset_at_every_level():
    raw = {
        **BASE,
        "preset": "identity",
        "edit": {"pnp_conv": 0.5},  # the job's own field beats the job's preset
        "variants": [
            {"name": "job-preset"},
            {"name": "own-field", "edit": {"pnp_spatial": 0.1}},
            {"name": "other-preset", "preset": "subject-driven"},  # over the job's fields, under its own
            {"name": "other-preset-own", "preset": "subject-driven", "edit": {"pnp_temporal": 0.5}},
        ],
    }
    a, b, c, d = build_job(raw).variants
    assert pnp(a.edit) == (0, 0.5, 0.8, 1.0) and a.editor.name == "instantid"
    assert pnp(b.edit) == (0, 0.5, 0.1, 1.0) and b.editor.name == "instantid"
    assert pnp(c.edit) == (0, 0.2, 0.2, 1.0) and c.editor.name == "anydoor"
    assert pnp(d.edit) == (0, 0.2, 0.2, 0.5) and d.editor.name == "anydoor"
    # a command-line flag beats every variant and preset
    flagged = build_job(raw, overrides={"edit.pnp_temporal": 0.3}).variants
    assert {v.edit.pnp_temporal for v in flagged} == {0.3}
    # so does an editor the job names, and a preset given on the command line replaces the variants' own
    named = build_job({**raw, "editor": {"name": "provided"}}).variants
    assert {v.editor.name for v in named} == {"provided"}
    replaced = build_job(raw, overrides={"preset": "identity"}).variants
    assert [pnp(v.edit)[1:] for v in replaced] == [(0.5, 0.8, 1.0), (0.5, 0.1, 1.0), (0.5, 0.8, 1.0), (0.5, 0.8, 0.5)]
    assert {v.editor.name for v in replaced} == {"instantid"}


def test_a_preset_is_only_its_values_in_the_fingerprint():
    with_preset = build_job({**BASE, "preset": "subject-driven", "editor": "provided"})
    spelled_out = build_job(
        {**BASE, "edit": {"init_step": 0, "pnp_conv": 0.2, "pnp_spatial": 0.2, "pnp_temporal": 1.0}}
    )
    plain = build_job(BASE)
    prints = [job_fingerprints(j).fingerprints["edit"][0] for j in (with_preset, spelled_out, plain)]
    assert prints[0] == prints[1] != prints[2]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**BASE, "preset": "inpaint"}, "unknown preset 'inpaint'; choose one of: subject-driven, identity"),
        ({**BASE, "preset": "identity", "backbone": "seine"}, "preset 'identity' holds the official i2vgen-xl"),
        (
            {**BASE, "variants": [{"name": "a"}, {"name": "b", "backbone": "consisti2v", "preset": "subject-driven"}]},
            "variants[1].preset: preset 'subject-driven' holds the official i2vgen-xl settings and consisti2v",
        ),
        (
            {**BASE, "preset": "identity", "variants": [{"name": "a", "backbone": "consisti2v"}]},
            "preset 'identity' holds the official i2vgen-xl settings and consisti2v has none",
        ),
    ],
)
def test_an_unknown_or_inapplicable_preset_is_refused(raw, message):
    with pytest.raises(JobError) as e:
        build_job(raw, "job.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_commands_refuse_a_bad_preset_before_any_work(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # never opened: the preset is refused first
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"input": str(tmp_path / "a.tar"), "output": str(tmp_path)}))
    for argv, message in [
        (["edit", clip, "-o", tmp_path / "o.mp4", "--preset", "identity", "--backbone", "seine"], "has none"),
        (["edit", clip, "-o", tmp_path / "o.mp4", "--preset", "bogus"], "unknown preset 'bogus'"),
        (["run", tmp_path / "job.yaml", "--preset", "bogus"], "unknown preset 'bogus'"),
    ]:
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "job.yaml"]


def test_presets_lists_every_preset_with_its_values(capsys):
    main(["presets"])
    out = capsys.readouterr().out
    for p in TASK_PRESETS.values():
        assert p.name in out and p.task_name in out and f"editor {p.editor}" in out
    assert "pnp_conv 0.8, pnp_spatial 0.8, pnp_temporal 1" in out
