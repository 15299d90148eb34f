"""`anyv2v-batch report`: the sample and histogram numbers, the refusals, and the pages in a real
headless Chromium (loaded from disk: gallery items and their order, sorting by a score, no broken
picture, no console error, a screenshot).

The job output is built directly in the output layout (real H.264 mp4s, PNGs, tars and Parquet),
without running the diffusion job: two variants, scores, a pair routed to filtered/, error rows, one
source shard present and one gone.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import Browser, find_browser
from PIL import Image
from shards import recolor

from anyv2v_batch.cli import main
from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.pipelines.report import write_report
from anyv2v_batch.pipelines.report_stats import METRICS, choose_sample, gather_stats, histogram
from anyv2v_batch.video_io import encode_mp4, encode_png

FRAMES, FPS, WIDTH, HEIGHT = 8, 8.0, 96, 64

# (shard, key, variant) -> scores; None: an error row. "b" of night fails its clip_text check and is
# routed to filtered/; shard 000001's source shard is gone when the report is made.
SCORES = {
    ("000000", "clip-a", "night"): dict(clip_text=0.30, edit_hold=0.91, source_similarity=0.70, motion_fidelity=0.80),
    ("000000", "clip-b", "night"): dict(clip_text=0.19, edit_hold=0.88, source_similarity=0.72, motion_fidelity=0.75),
    ("000000", "clip-c", "night"): dict(clip_text=0.27, edit_hold=0.60, source_similarity=0.95, motion_fidelity=0.20),
    ("000000", "clip-d", "night"): None,
    ("000001", "clip-e", "night"): dict(clip_text=0.25, edit_hold=0.93, source_similarity=0.66, motion_fidelity=0.90),
    ("000001", "clip-f", "night"): dict(clip_text=0.28, edit_hold=0.85, source_similarity=0.81, motion_fidelity=0.55),
    ("000000", "clip-a", "sketch"): dict(clip_text=0.26, edit_hold=0.95, source_similarity=0.60, motion_fidelity=0.85),
    ("000000", "clip-b", "sketch"): dict(clip_text=0.31, edit_hold=0.97, source_similarity=0.58, motion_fidelity=0.88),
    ("000000", "clip-c", "sketch"): dict(clip_text=0.29, edit_hold=0.90, source_similarity=0.64, motion_fidelity=0.61),
    ("000000", "clip-d", "sketch"): None,
    ("000001", "clip-e", "sketch"): dict(clip_text=0.33, edit_hold=0.92, source_similarity=0.62, motion_fidelity=0.77),
    ("000001", "clip-f", "sketch"): None,
}
FILTERED = {("000000", "clip-b", "night")}
THRESHOLD_CLIP_TEXT = 0.2


def moving_clip(seed: int, frames: int, width: int, height: int) -> np.ndarray:
    """A disc moving over a colour gradient: something to see in the previews."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, size=3)
    y, x = np.mgrid[0:height, 0:width]
    clip = []
    for f in range(frames):
        frame = np.empty((height, width, 3))
        for c in range(3):
            frame[..., c] = base[c] + 50 * np.sin(x / width * 3 + c + seed) + 30 * np.cos(y / height * 2 - c)
        cx, cy = width * (0.2 + 0.6 * f / max(frames - 1, 1)), height * (0.5 + 0.2 * np.sin(f + seed))
        frame[(x - cx) ** 2 + (y - cy) ** 2 < (height / 5) ** 2] = (250, 240, 80)
        clip.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(clip)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return buffer.getvalue()


def build_output(root: Path) -> Path:
    """A job output in the layout `anyv2v-batch run` writes, with scores and routing."""
    sources, out = root / "inputs", root / "out"
    sources.mkdir(parents=True)
    shards: dict[str, dict[str, dict]] = {}
    for shard, key, variant in SCORES:
        shards.setdefault(shard, {}).setdefault(key, {})[variant] = SCORES[shard, key, variant]
    for shard, keys in shards.items():
        source_url = str(sources / f"{shard}.tar")
        source_members, kept, filtered, rows = {}, {}, {}, []
        for i, key in enumerate(sorted(keys)):
            seed = sum(map(ord, key))
            source = moving_clip(seed, 12, 120, 80)  # longer and larger than the clip: the job fits it
            source_members[f"{key}.mp4"] = encode_mp4(source, FPS)
            for variant, scores in sorted(keys[key].items()):
                row = {
                    "source_shard": source_url, "shard_id": shard, "key": key, "variant": variant,
                    "output_key": f"{key}.{variant}", "status": "ok" if scores else "error",
                    "error": "" if scores else f"decode: cannot decode '{key}.mp4': frames are corrupt",
                    "prompt": f"{key}, as a {variant} scene", "frames": FRAMES, "fps": FPS, "width": WIDTH,
                    "height": HEIGHT,
                    **{f"seconds_{s}": 0.1 * (j + 1) for j, s in enumerate(("read", "decode", "editor"))},
                    "seconds_inversion": 2.0 + i, "seconds_sampler": 1.5, "seconds_scorer": 0.2, "seconds_encode": 0.05,
                }  # fmt: skip
                for m in METRICS:
                    row[m.column] = (scores or {}).get(m.name)
                failed = ["clip_text.min"] if scores and scores["clip_text"] < THRESHOLD_CLIP_TEXT else []
                row["passed"] = None if not scores else not failed
                row["failed_checks"] = None if not scores else failed
                routed = "filtered" if (shard, key, variant) in FILTERED else "shards"
                row["routed"] = routed if scores else None
                row["scorer"] = json.dumps({"model": "tiny-clip", "dtype": "float32"}) if scores else None
                rows.append(row)
                if not scores:
                    continue
                clip = np.stack([recolor(f) for f in moving_clip(seed, FRAMES, WIDTH, HEIGHT)])
                edited = clip[0]
                record = {"key": key, "variant": variant, "source_shard": source_url, "clip": {"resize": "stretch"}}
                files = {"mp4": encode_mp4(clip, FPS), "png": encode_png(edited), "json": json.dumps(record).encode()}
                target = filtered if routed == "filtered" else kept
                target.update({f"{key}.{variant}.{ext}": data for ext, data in files.items()})
        (sources / f"{shard}.tar").write_bytes(tar_bytes(source_members))
        (out / "shards").mkdir(parents=True, exist_ok=True)
        (out / "shards" / f"{shard}.tar").write_bytes(tar_bytes(kept))
        if filtered:
            (out / "filtered" / "shards").mkdir(parents=True, exist_ok=True)
            (out / "filtered" / "shards" / f"{shard}.tar").write_bytes(tar_bytes(filtered))
        (out / "metadata").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out / "metadata" / f"{shard}.parquet")
    (sources / "000001.tar").unlink()  # that input is gone: its sources show as unavailable
    return out


@pytest.fixture(scope="module")
def job_output(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("report-job"))


@pytest.fixture(scope="module")
def report(job_output: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "report"
    main(["report", str(job_output), "-o", str(folder), "--per-variant", "2", "-q"])  # exits only on an error
    return folder


def ok_pairs(variant: str) -> list[tuple[str, str]]:
    return sorted((s, k) for (s, k, v), sc in SCORES.items() if v == variant and sc)


# ---- the numbers


def test_histogram_equals_numpy():
    values = np.random.default_rng(3).normal(0.27, 0.04, size=5000)
    edges, counts = histogram(values)
    want, want_edges = np.histogram(values, bins=20, range=(values.min(), values.max()))
    assert counts == want.tolist()
    np.testing.assert_allclose(edges, want_edges, rtol=0, atol=1e-12)
    assert sum(counts) == 5000


def test_report_numbers(report: Path):
    numbers = json.loads((report / "report.json").read_text())
    night, sketch = numbers["variants"]["night"], numbers["variants"]["sketch"]
    assert (night["rows"], night["ok"], night["error"], night["filtered"], night["failed_checks"]) == (6, 5, 1, 1, 1)
    assert (sketch["rows"], sketch["ok"], sketch["error"], sketch["filtered"], sketch["passed"]) == (6, 4, 2, 0, 4)
    for variant, v in numbers["variants"].items():
        for m in ("clip_text", "edit_hold", "source_similarity", "motion_fidelity"):
            values = [sc[m] for (_, _, var), sc in SCORES.items() if var == variant and sc]
            want, _ = np.histogram(values, bins=20, range=(min(values), max(values)))
            assert v["scores"][m]["histogram"]["counts"] == want.tolist()
            assert v["scores"][m]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert "aesthetic_min" not in v["scores"]  # a score no row has is left out, not drawn empty
    # seconds per stage: the mean over the variant's ok pairs
    inversion = [2.0 + sorted({k for (s, k, _) in SCORES if s == shard}).index(key)
                 for shard, key in ok_pairs("night")]  # fmt: skip
    assert night["seconds_mean"]["inversion"] == pytest.approx(np.mean(inversion))
    assert night["seconds_mean"]["sampler"] == pytest.approx(1.5)
    assert night["seconds_mean"]["scorer"] == pytest.approx(0.2)


def test_per_variant_sample(report: Path):
    numbers = json.loads((report / "report.json").read_text())
    night = numbers["variants"]["night"]["shown"]
    # per variant 2: the 2 worst (the failing pair first, then clip-c: lowest motion fidelity and edit
    # hold, highest source similarity) and 2 more at random
    assert [(s["key"], s["sample"]) for s in night[:2]] == [("clip-b", "worst"), ("clip-c", "worst")]
    assert [s["sample"] for s in night[2:]] == ["random", "random"]
    assert len({s["key"] for s in night}) == 4


def metadata_rows(n: int, seed: int, metrics: tuple[str, ...]) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"shard_id": f"{i % 4:06d}", "key": f"k{i:06d}", "variant": "v", "status": "ok", "error": ""}
        for m in metrics:
            row[f"score_{m}"] = float(rng.uniform(0, 1))
        row["passed"] = bool(i % 97)  # a few fail their checks
        rows.append(row)
    return rows


def write_metadata(folder: Path, rows: list[dict], files: int) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for f in range(files):
        part = rows[f::files]
        path = folder / f"{f:06d}.parquet"
        pq.write_table(pa.Table.from_pylist(part), path, row_group_size=1000)
        paths.append(str(path))
    return paths


def test_sample_worst_and_random_are_deterministic(tmp_path: Path):
    rows = metadata_rows(3000, 0, ("clip_text", "source_similarity"))
    files = write_metadata(tmp_path / "a", rows, 3)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    other_files = write_metadata(tmp_path / "b", shuffled, 5)  # other files, other order, same rows

    def sample(paths: list[str], seed: int) -> tuple[list[str], list[str]]:
        items = choose_sample(paths, gather_stats(paths), 50, seed)["v"]
        return [it.row["key"] for it in items if it.sample == "worst"], [
            it.row["key"] for it in items if it.sample == "random"
        ]

    worst, lucky = sample(files, 0)
    assert (worst, lucky) == sample(other_files, 0)
    assert len(worst) == 50 and len(lucky) == 50 and not set(worst) & set(lucky)
    worst7, lucky7 = sample(files, 7)
    assert worst7 == worst and set(lucky7) != set(lucky)
    # the worst: failing pairs first (31 of them), then by the rank of a pair's worst score, where a
    # high source similarity is bad
    failing = {r["key"] for r in rows if not r["passed"]}
    assert set(worst[: len(failing)]) == failing
    ranks = {}
    text = np.array([r["score_clip_text"] for r in rows])
    similarity = np.array([r["score_source_similarity"] for r in rows])
    for r in rows:
        low_text = (text < r["score_clip_text"]).mean()
        high_similarity = (similarity > r["score_source_similarity"]).mean()
        ranks[r["key"]] = min(low_text, high_similarity)
    rest = sorted((r for r in rows if r["passed"]), key=lambda r: ranks[r["key"]])
    want = [r["key"] for r in rest[: 50 - len(failing)]]
    # ranks come from 1000-bin histograms interpolated within a bin: equal to the exact ranks to
    # within a bin's share of the pairs, so compare the set with a margin of a few pairs
    assert len(set(worst[len(failing) :]) & set(want)) >= len(want) - 2


def test_sample_by_one_score_is_exact(tmp_path: Path):
    rows = metadata_rows(2000, 5, ("motion_fidelity",))
    for r in rows:
        r["passed"] = None  # scored, not checked
    files = write_metadata(tmp_path / "m", rows, 2)
    items = choose_sample(files, gather_stats(files), 40, 0)["v"]
    worst = [it.row["key"] for it in items if it.sample == "worst"]
    assert worst == [r["key"] for r in sorted(rows, key=lambda r: r["score_motion_fidelity"])[:40]]


def test_sample_streams_the_metadata(tmp_path: Path):
    """Memory stays bounded: far below what the rows take when held at once."""
    n, rng = 20_000, np.random.default_rng(1)
    table = pa.table(
        {
            "shard_id": [f"{i % 4:06d}" for i in range(n)],
            "key": [f"k{i:06d}" for i in range(n)],
            "variant": ["v"] * n,
            "status": ["ok"] * n,
            "error": [""] * n,
            "prompt": ["a long prompt describing the edited video, " * 4] * n,
            **{f"score_{m}": rng.uniform(0, 1, n) for m in ("clip_text", "edit_hold", "motion_fidelity")},
        }
    )
    (tmp_path / "big").mkdir()
    files = []
    for f in range(4):
        files.append(str(tmp_path / "big" / f"{f:06d}.parquet"))
        pq.write_table(table.slice(f * n // 4, n // 4), files[-1], row_group_size=1000)
    tracemalloc.start()
    whole = pq.read_table(str(tmp_path / "big")).to_pylist()  # the rows held at once, as the report uses them
    _, whole_peak = tracemalloc.get_traced_memory()
    del whole
    tracemalloc.stop()
    tracemalloc.start()
    stats = gather_stats(files)
    chosen = choose_sample(files, stats, 20, 0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stats["v"].rows == n and len(chosen["v"]) == 40
    assert peak < whole_peak / 5, (peak, whole_peak)


# ---- refusals


def test_refusals_before_any_work(job_output: Path, tmp_path: Path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        # an unwritable -o is refused before OUT is even looked at (OUT does not exist here)
        ([str(tmp_path / "nothing"), "-o", str(a_file / "report")], "cannot write the report folder"),
        ([str(tmp_path / "nothing"), "-o", str(tmp_path / "r1")], "does not exist"),
        ([str(tmp_path), "-o", str(tmp_path / "r2")], "is not an anyv2v-batch output"),
        ([str(job_output), "-o", str(job_output / "shards" / "r")], "inside shards/ of the output"),
        ([str(job_output), "-o", str(job_output)], "the output itself"),
        ([str(job_output), "-o", str(job_output.parent / "inputs")], "holds other files"),
        ([str(job_output), "-o", str(tmp_path / "r3"), "--per-variant", "0"], "at least 1"),
    ]
    for args, message in cases:
        before = sorted(p for p in tmp_path.rglob("*"))
        with pytest.raises(SystemExit) as exit_info:
            main(["report", *args])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1, args
        assert err.startswith("error: ") and message in err and "\n" not in err, (args, err)
        assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written
    damaged = tmp_path / "damaged"
    (damaged / "metadata").mkdir(parents=True)
    (damaged / "metadata" / "000000.parquet").write_bytes(b"not parquet")
    with pytest.raises(AnyV2VError, match="cannot read .*000000.parquet"):
        write_report(str(damaged), str(tmp_path / "r4"))


def test_rerun_replaces_a_former_report(job_output: Path, tmp_path: Path):
    folder = tmp_path / "again"
    first = write_report(str(job_output), str(folder), per_variant=3)
    media_first = set(os.listdir(folder / "media"))
    second = write_report(str(job_output), str(folder), per_variant=1)
    media_second = set(os.listdir(folder / "media"))
    assert first.shown == 9 and second.shown == 4  # night 5 ok, sketch 4 ok; then 2 + 2
    assert media_second < media_first  # the former report's extra previews are gone
    numbers = json.loads((folder / "report.json").read_text())
    used = {p for v in numbers["variants"].values() for s in v["shown"] for p in s["media"].values()}
    assert used == {f"media/{name}" for name in media_second}


def test_output_of_an_older_run_without_scores(job_output: Path, tmp_path: Path):
    """Metadata without the score, check and routing columns (an output made before scoring existed)."""
    old = tmp_path / "old"
    shutil.copytree(job_output, old)
    shutil.rmtree(old / "filtered")  # nothing was routed then
    new_columns = {m.column for m in METRICS} | {"passed", "failed_checks", "routed", "scorer"}
    for path in (old / "metadata").glob("*.parquet"):
        table = pq.read_table(path)
        table = table.drop_columns([c for c in table.column_names if c in new_columns])
        table = table.filter(pa.compute.invert(pa.compute.equal(table["key"], "clip-b")))  # was in filtered/
        pq.write_table(table, path)
    summary = write_report(str(old), str(tmp_path / "r"), per_variant=1)
    numbers = json.loads((tmp_path / "r" / "report.json").read_text())
    night = numbers["variants"]["night"]
    assert (night["ok"], night["error"], night["filtered"], night["scores"]) == (4, 1, 0, {})
    assert [s["sample"] for s in night["shown"]] == ["random", "random"]  # 2 x 1 at random: nothing to rank
    assert summary.shown == 4
    page = (tmp_path / "r" / night["gallery"]).read_text()
    assert 'data-sample="random"' in page and "data-clip_text" not in page
    assert "No scores in this output" in (tmp_path / "r" / "index.html").read_text()


# ---- in a browser


@pytest.fixture(scope="module")
def browser():
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium here: install Debian's `chromium` (apt-get install chromium; .ci/run does as root)")
    with Browser(executable, width=1400, height=1000) as b:
        yield b


def gallery_state(browser: Browser) -> list[dict]:
    return browser.evaluate(
        """Array.from(document.querySelectorAll('#gallery .item')).map(el => ({
            key: el.dataset.key, sample: el.dataset.sample,
            clip_text: el.dataset.clip_text === '' ? null : parseFloat(el.dataset.clip_text),
            source_similarity: parseFloat(el.dataset.source_similarity),
            images: el.querySelectorAll('.media img').length,
            strips: el.querySelectorAll('.strips img').length,
            missing: Array.from(el.querySelectorAll('.missing')).map(m => m.textContent)}))"""
    )


def choose_sort(browser: Browser, value: str, best: bool = False) -> None:
    browser.evaluate(
        f"""(() => {{ const s = document.getElementById('sort'); s.value = {json.dumps(value)};
        s.dispatchEvent(new Event('change'));
        const b = document.getElementById('best'); if (b.checked !== {json.dumps(best)}) b.click(); }})()"""
    )


ALL_MEDIA_DECODE = """Promise.all(Array.from(document.images).map(img => {
    const probe = new Image(); probe.src = img.getAttribute('src');
    return probe.decode().then(() => [img.getAttribute('src'), probe.naturalWidth, probe.naturalHeight],
                               () => [img.getAttribute('src'), 0, 0]);
}))"""


def test_gallery_in_browser(report: Path, browser: Browser, tmp_path: Path):
    index = json.loads((report / "report.json").read_text())["variants"]["night"]["gallery"]
    browser.open((report / index).as_uri())
    items = gallery_state(browser)
    # --per-variant 2 of night's 5 ok pairs: 2 worst + 2 random, worst overall first
    assert len(items) == 4
    assert [i["key"] for i in items[:2]] == ["clip-b", "clip-c"]
    assert sorted(i["sample"] for i in items) == ["random", "random", "worst", "worst"]
    # the failed check ("clip_text.min") marks that score of that pair
    marked = browser.evaluate(
        "Array.from(document.querySelectorAll('.item')).map(e => [e.dataset.key, "
        "Array.from(e.querySelectorAll('td.bad')).map(td => td.previousSibling.textContent)])"
    )
    assert {k: v for k, v in marked if v} == {"clip-b": ["CLIP text"]}
    # sort by CLIP text: worst (lowest) first; by source similarity: worst (highest) first
    choose_sort(browser, "clip_text")
    values = [i["clip_text"] for i in gallery_state(browser)]
    assert values == sorted(values) and len(values) == 4
    choose_sort(browser, "clip_text", best=True)
    assert [i["clip_text"] for i in gallery_state(browser)] == sorted(values, reverse=True)
    choose_sort(browser, "source_similarity")
    similarity = [i["source_similarity"] for i in gallery_state(browser)]
    assert similarity == sorted(similarity, reverse=True)
    assert browser.evaluate("document.getElementById('sorted-by').textContent") == "source similarity, worst first"
    # pictures: every <img> decodes; the sources of the gone shard are shown as unavailable, not broken
    decoded = browser.evaluate(ALL_MEDIA_DECODE)
    assert decoded and all(w > 0 and h > 0 for _, w, h in decoded), decoded
    for item in gallery_state(browser):
        gone = item["key"] in ("clip-e", "clip-f")
        assert item["missing"] == (["source unavailable"] if gone else []), item
        assert item["images"] == (2 if gone else 3) and item["strips"] == (1 if gone else 2)
    # the output previews are animated at the clip's frame count, sized like the clip
    for src, _, _ in decoded:
        with Image.open(report / src) as image:
            if src.endswith(".out.webp") or src.endswith(".src.webp"):
                assert image.n_frames == FRAMES and image.size == (WIDTH, HEIGHT)
            if src.endswith(".strip.webp"):  # every frame side by side (FRAMES <= 8), each as wide as it fits
                cell = (620 - 2 * (FRAMES - 1)) // FRAMES
                assert image.n_frames == 1 and image.size == (FRAMES * (cell + 2) - 2, round(HEIGHT * cell / WIDTH))
    links = browser.evaluate("Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))")
    assert sum(h.endswith(".out.mp4") for h in links) == 4  # each output's mp4, copied beside its preview
    assert all((report / h).is_file() for h in links)
    assert browser.console_errors == []
    # a sort named in the URL applies on opening
    browser.open((report / "index.html").as_uri())
    browser.open((report / index).as_uri() + "#sort=motion_fidelity")
    fidelity = browser.evaluate(
        "Array.from(document.querySelectorAll('#gallery .item')).map(e => +e.dataset.motion_fidelity)"
    )
    assert (
        fidelity == sorted(fidelity) and browser.evaluate("document.getElementById('sort').value") == "motion_fidelity"
    )
    choose_sort(browser, "rank")
    shot = browser.screenshot(tmp_path / "report-gallery.png")
    assert Image.open(shot).size == (1400, 1000)
    keep = os.environ.get("ANYV2V_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    print(f"report screenshot: {shot}")


def test_overview_and_errors_in_browser(report: Path, browser: Browser):
    browser.open((report / "index.html").as_uri())
    counts = browser.evaluate(
        "Array.from(document.querySelectorAll('#counts tr')).slice(1).map(r => "
        "Array.from(r.cells).slice(0, 7).map(c => c.textContent))"
    )
    assert counts == [["night", "6", "5", "4", "1", "1", "1"], ["sketch", "6", "4", "4", "0", "0", "2"]]
    hist = browser.evaluate(
        "Array.from(document.querySelectorAll('section.variant')).map(s => [s.dataset.variant, "
        "Array.from(s.querySelectorAll('figure.hist')).map(f => [f.dataset.metric, "
        "f.dataset.counts.split(',').map(Number), f.querySelectorAll('rect.bar').length])])"
    )
    for variant, figures in hist:
        assert [f[0] for f in figures] == ["clip_text", "edit_hold", "source_similarity", "motion_fidelity"]
        for metric, counts, bars in figures:
            values = [sc[metric] for (_, _, v), sc in SCORES.items() if v == variant and sc]
            assert counts == np.histogram(values, bins=20, range=(min(values), max(values)))[0].tolist()
            assert bars == 20
    links = browser.evaluate("Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))")
    assert all(not h.startswith(("http:", "https:", "/")) for h in links)
    assert all((report / h.split("#")[0]).exists() for h in links if not h.startswith("#"))
    assert browser.console_errors == []
    browser.open((report / "errors.html").as_uri())
    errors = browser.evaluate(
        "Array.from(document.querySelectorAll('section.errors')).map(s => [s.dataset.variant, "
        "Array.from(s.querySelectorAll('tr.error-row')).map(r => [r.cells[1].textContent, r.cells[2].textContent])])"
    )
    assert errors == [
        ["night", [["clip-d", "decode: cannot decode 'clip-d.mp4': frames are corrupt"]]],
        ["sketch", [["clip-d", "decode: cannot decode 'clip-d.mp4': frames are corrupt"],
                    ["clip-f", "decode: cannot decode 'clip-f.mp4': frames are corrupt"]]],
    ]  # fmt: skip
    assert browser.console_errors == []


# ---- on an object store


def test_report_from_and_to_a_bucket(job_output: Path, report: Path, monkeypatch):
    """OUT and -o on an S3-compatible server (moto on 127.0.0.1): the pages and previews are objects
    with the Content-Type a browser needs when the bucket serves them; a bucket that does not exist is
    refused before anything is read."""
    import s3fs
    from s3_server import S3Server

    server = S3Server()
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # no client made before the endpoint was set
        fs = s3fs.S3FileSystem()
        fs.mkdir("jobs")
        fs.put(str(job_output), "jobs/out", recursive=True)
        with pytest.raises(AnyV2VError, match="cannot write the report folder 's3://nobucket/report'"):
            write_report("s3://jobs/missing-output", "s3://nobucket/report")
        summary = write_report("s3://jobs/out", "s3://jobs/report", per_variant=2)
        assert summary.line().startswith("wrote s3://jobs/report/index.html: 2 variant(s), 12 pairs (3 errors)")
        numbers = json.loads(fs.cat_file("jobs/report/report.json"))
        media = {p for v in numbers["variants"].values() for s in v["shown"] for p in s["media"].values()}
        assert media and all(fs.exists(f"jobs/report/{p}") for p in media)

        def stored_type(name: str) -> str:
            return fs.call_s3("head_object", Bucket="jobs", Key=f"report/{name}")["ContentType"]

        types = {name: stored_type(name) for name in ("index.html", "errors.html")}
        types |= {p.rsplit(".", 1)[-1]: stored_type(p) for p in media}
        assert types == {
            "index.html": "text/html; charset=utf-8", "errors.html": "text/html; charset=utf-8",
            "webp": "image/webp", "mp4": "video/mp4",
        }  # fmt: skip
        # the same galleries as the report of the local folder (the rows' sources are local paths)
        local = json.loads((report / "report.json").read_text())
        for variant, v in numbers["variants"].items():
            assert v["shown"] == local["variants"][variant]["shown"]
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # none pointing at a stopped server
        server.stop()
