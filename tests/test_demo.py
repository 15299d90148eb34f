"""`anyv2v-batch demo`: a newcomer's first run, through the real job on the model organism (pack -> run
-> report: also the test of a job on packed shards): every world clip edited with its own edited first
frame and templated caption, its output moving as its source moves (the job's own motion-fidelity
score), each pair shown frame by frame in the report; a second demo into the same folder refused."""

from __future__ import annotations

import io
import json
import re
import shutil

import pyarrow.parquet as pq
import pytest
from cli_runner import run_cli
from shards import read_tar

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.organism import I2VGEN_XL_WORLD, organism_model
from anyv2v_batch.video_io import read_video

CLIPS = 1  # one clip proves the path; the demo's other clips differ only in what the world draws
# measured on the demo's first clips: motion fidelity 0.35, 0.33 and 0.22 (the organism's output moves as
# its source does); an output from fresh noise, which ignores the source's motion, scores -0.05 to 0.14
# (tests/test_organism_effect.py, benchmarks/RESULTS.md)
MIN_MOTION_FIDELITY = 0.25


def test_demo_edits_world_clips_that_follow_their_sources(ray_local, tmp_path):
    folder = tmp_path / "demo"
    code, said = run_cli(["demo", "-o", folder, "--clips", CLIPS, "-q"])
    assert code == 0, said
    assert re.fullmatch(rf"demo: {CLIPS} world clips edited \({CLIPS} ok, 0 errors\) in \d+ s; open .+", said[-1])

    records = json.loads((folder / "videos" / "captions.json").read_text())
    members = read_tar(folder / "output" / "shards" / "000000.tar")
    packed = read_tar(folder / "shards" / "000000.tar")
    rows = {r["key"]: r for r in pq.read_table(folder / "output" / "metadata").to_pylist()}
    assert sorted(rows) == sorted(records) and all(r["status"] == "ok" for r in rows.values())
    for key, record in records.items():
        output = read_video(io.BytesIO(members[f"{key}.recolour.mp4"]), 8, 8, 32, 32).frames
        assert output.shape == (8, 32, 32, 3)
        assert rows[key]["prompt"] == record["caption"]  # "{caption}" filled from the packed metadata
        assert members[f"{key}.recolour.png"] == packed[f"{key}.edited.png"]  # the edit the sample brought
        assert rows[key]["score_motion_fidelity"] >= MIN_MOTION_FIDELITY, (key, rows[key]["score_motion_fidelity"])

    # the report shows each pair frame by frame (source and output strips)
    gallery = (folder / "report" / "gallery-0.html").read_text()
    assert gallery.count('class="strips"') == CLIPS and gallery.count(".strip.webp") == 2 * CLIPS

    # a second demo into the same folder is refused before any work, in one line, nothing written
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    code, said = run_cli(["demo", "-o", folder])
    assert code == 1 and len(said) == 1 and "is not empty" in said[0]
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_an_organism_missing_from_the_install_is_one_line(tmp_path):
    assert organism_model(I2VGEN_XL_WORLD) == str(I2VGEN_XL_WORLD)
    partial = tmp_path / I2VGEN_XL_WORLD.name
    shutil.copytree(I2VGEN_XL_WORLD, partial, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(AnyV2VError) as e:
        organism_model(partial)
    assert str(e.value).count("\n") == 0 and "unet/diffusion_pytorch_model.safetensors missing" in str(e.value)
