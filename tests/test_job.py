"""Job files and command-line overrides: validated before any work, one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anyv2v_batch.cli import main
from anyv2v_batch.job import JobError, build_job, load_job, parse_set

EXAMPLES = sorted((Path(__file__).parent.parent / "pipelines" / "examples").glob("*.yaml"))
BASE = {"input": "shards/{000..009}.tar", "output": "out/"}


def test_examples_are_valid_jobs():
    assert EXAMPLES
    for path in EXAMPLES:
        job = load_job(path)
        assert job.variants and job.output


def test_defaults_and_single_variant_from_flags_alone():
    job = load_job(None, {"input": ["a.tar"], "output": "o", "edit.prompt": "{caption}", "editor.name": "provided"})
    (variant,) = job.variants
    assert variant.name == "edit" and variant.edit.prompt == "{caption}" and variant.edit.steps == 50
    assert variant.inversion.steps == 500 and variant.clip.width == 512 and variant.seed == 8888
    assert job.pool("sampler").size is None and job.pool("sampler").num_gpus is None  # sized at run time


def test_variants_inherit_and_override():
    job = build_job({**BASE, "edit": {"steps": 30}, "seed": 5, "variants": [
        {"name": "a", "prompt": "x"}, {"name": "b", "edit": {"guidance_scale": 7.5}, "seed": 9},
        {"name": "c", "clip": {"frames": 8}},
    ]})  # fmt: skip
    a, b, c = job.variants
    assert (a.edit.prompt, a.edit.steps, a.seed) == ("x", 30, 5)
    assert (b.edit.guidance_scale, b.edit.steps, b.seed) == (7.5, 30, 9)
    assert c.clip.frames == 8 and a.clip.frames == 16


def test_flags_win_over_variants():
    raw = {**BASE, "variants": [{"name": "a", "edit": {"steps": 10}}, {"name": "b"}]}
    job = build_job(raw, overrides={"edit.steps": 20, "pools.sampler.size": 3})
    assert [v.edit.steps for v in job.variants] == [20, 20] and job.pool("sampler").size == 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "edti": {}}, "edti is not a job field (did you mean 'edit'?)"),
        ({**BASE, "edit": {"stesp": 5}}, "edit.stesp is not a job field (did you mean 'steps'?)"),
        ({**BASE, "edit": {"steps": "many"}}, "edit.steps must be an int, got 'many'"),
        ({**BASE, "edit": {"pnp_conv": 1.5}}, "edit.pnp_conv must be between 0 and 1, got 1.5"),
        ({**BASE, "variants": [{"name": "a", "clip": {"width": 500}}]}, "variants[0].clip.width must be a positive"),
        ({**BASE, "variants": [{"name": "a.b"}]}, "variants[0].name must be letters, digits"),
        ({**BASE, "variants": [{"name": "a"}, {"name": "a"}]}, "names must be unique; repeated: a"),
        ({**BASE, "variants": []}, "variants must be a non-empty list"),
        ({**BASE, "edit": {"seed": 3}}, "edit.seed is not set per edit"),
        ({**BASE, "pools": {"sampler": {"size": 0}}}, "pools.sampler.size must be >= 1"),
        ({**BASE, "pools": {"gpu": {}}}, "pools.gpu is not a job field"),
        ({**BASE, "backbone": "sora"}, "backbone must be one of i2vgen-xl"),
        ({"output": "o"}, "input is missing"),
        ({"input": "a.tar"}, "output is missing"),
        ({**BASE, "variants": [{"name": "a", "prompt": "x", "edit": {"prompt": "y"}}]}, "prompt is given twice"),
    ],
)
def test_bad_fields_are_named(raw, message):
    with pytest.raises(JobError) as err:
        build_job(raw, "job.yaml")
    assert str(err.value).startswith("job.yaml: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_set_parses_yaml_values():
    assert parse_set(["pools.sampler.size=4", "edit.prompt=a b", "clip.fps=7.5", "input=[a.tar, b.tar]"]) == {
        "pools.sampler.size": 4, "edit.prompt": "a b", "clip.fps": 7.5, "input": ["a.tar", "b.tar"]}  # fmt: skip
    with pytest.raises(JobError, match="expected KEY=VALUE"):
        parse_set(["novalue"])


def test_yaml_errors_and_missing_files(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("input: [a.tar\noutput: o\n")
    with pytest.raises(JobError, match=r"job.yaml: not valid YAML at line \d"):
        load_job(bad)
    with pytest.raises(JobError, match="does not exist"):
        load_job(tmp_path / "none.yaml")


def test_run_refuses_bad_jobs_before_any_work(tmp_path, capsys):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"input": str(tmp_path / "none-*.tar"), "output": "o"}))
    for argv, message in [
        (["run", tmp_path / "job.yaml"], "matches no file"),
        (["run", tmp_path / "job.yaml", "--steps", "0"], "edit.steps must be an integer >= 1"),
        (["run", "--input", tmp_path / "x.tar", "--output", tmp_path / "o"], "does not exist"),
        (["run", tmp_path / "job.yaml", "--editor", "paintbrush"], "unknown editor 'paintbrush'"),
    ]:
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_each_variant_takes_its_backbones_defaults_unless_the_job_says_otherwise():
    raw = {
        "input": "x.tar", "output": "o", "model": "/m/i2v", "inversion": {"steps": 100},
        "variants": [
            {"name": "a"},
            {"name": "b", "backbone": "consisti2v"},
            {"name": "c", "backbone": "seine", "model": "/m/seine", "edit": {"guidance_scale": 6.0}},
        ],
    }  # fmt: skip
    a, b, c = build_job(raw).variants
    assert (a.backbone, a.model, b.backbone, b.model) == ("i2vgen-xl", "/m/i2v", "consisti2v", None)
    assert c.model == "/m/seine"
    assert (a.edit.guidance_scale, b.edit.guidance_scale, c.edit.guidance_scale) == (9.0, 35.0, 6.0)
    assert (a.edit.init_step, b.edit.init_step, b.clip.width, c.clip.width) == (0, 4, 256, 512)
    assert (a.inversion.save_steps, c.inversion.save_steps) == (None, 250)
    assert a.inversion.steps == b.inversion.steps == c.inversion.steps == 100  # the job's value beats defaults
    assert build_job(raw).models() == [("i2vgen-xl", "/m/i2v"), ("consisti2v", None), ("seine", "/m/seine")]
    # a command-line --backbone applies to every variant
    flagged = build_job(raw, overrides={"backbone": "seine"}).variants
    assert {v.backbone for v in flagged} == {"seine"} and flagged[0].edit.guidance_scale == 4.0
