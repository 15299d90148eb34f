"""The report's pages as HTML text: plain strings, inline CSS, SVG and a little JavaScript, no external
asset, relative links only (the folder works opened from disk or copied to a bucket)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from typing import Any

from anyv2v_batch import __version__
from anyv2v_batch.pipelines.report_stats import PREVIEW_SIDE, STAGES, Item, Metric, ScoreStats, VariantStats

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 24px 40px; color: #222; background: #fafafa; }
nav { position: sticky; top: 0; background: #fafafa; padding: 10px 0; border-bottom: 1px solid #ddd; z-index: 1; }
nav a { margin-right: 14px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
.hists { display: flex; flex-wrap: wrap; gap: 12px; }
figure.hist { margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; }
figure.hist figcaption { font-size: 12px; color: #444; }
svg rect.bar { fill: #4a78b5; } svg text { font-size: 10px; fill: #555; }
.controls { margin: 12px 0; display: flex; gap: 16px; align-items: center; }
#gallery { display: flex; flex-wrap: wrap; gap: 14px; }
.item { background: #fff; border: 1px solid #ddd; padding: 8px; width: 636px; }
.item.failed { border-color: #d55; }
.media { display: flex; gap: 6px; }
.media figure { margin: 0; width: 206px; text-align: center; font-size: 12px; color: #555; }
.media img { width: 206px; height: auto; background: #eee; display: block; }
.missing { width: 206px; display: flex; align-items: center; justify-content: center;
  background: #eee; color: #888; font-size: 13px; }
.strips { margin-top: 6px; font-size: 12px; color: #555; }
.strips img { width: 620px; height: auto; display: block; margin: 2px 0 4px; image-rendering: pixelated; }
.meta { margin-top: 6px; font-size: 12px; }
.meta .key { font-weight: 600; word-break: break-all; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; background: #eee; margin-left: 4px; }
.badge.worst { background: #fde2c8; } .badge.filtered, .badge.failedb { background: #f6c9c9; }
table.scores td { padding: 1px 6px; } td.bad { color: #c22; font-weight: 600; }
.prompt { color: #555; margin: 4px 0 0; } .score-error { color: #c22; margin: 4px 0 0; }
table.error-rows th, table.kinds th { text-align: left; }
td.err { text-align: left; font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; }
"""

SORT_JS = """
(function () {
  var box = document.getElementById('gallery');
  var items = Array.prototype.slice.call(box.children);
  var higher = JSON.parse(document.getElementById('metrics').textContent);
  var select = document.getElementById('sort'), best = document.getElementById('best');
  function value(el, m) {
    var v = el.getAttribute('data-' + m);
    return v === null || v === '' ? null : parseFloat(v);
  }
  function apply() {
    var m = select.value, flip = best.checked ? -1 : 1;
    var worstFirst = m === 'rank' || m === 'order' || higher[m] ? 1 : -1;
    var sorted = items.slice().sort(function (a, b) {
      var x = value(a, m), y = value(b, m);
      if (x === null || y === null) {
        if (x === y) return value(a, 'order') - value(b, 'order');
        return x === null ? 1 : -1;  // pairs without this score last
      }
      return (x - y) * worstFirst * flip || value(a, 'order') - value(b, 'order');
    });
    sorted.forEach(function (el) { box.appendChild(el); });
    document.getElementById('sorted-by').textContent =
      select.options[select.selectedIndex].text + (best.checked ? ', best first' : ', worst first');
    try { history.replaceState(null, '', '#sort=' + m + (best.checked ? '&best' : '')); } catch (e) {}
  }
  var wanted = /sort=([a-z_]+)/.exec(location.hash);
  if (wanted && select.querySelector('option[value="' + wanted[1] + '"]')) select.value = wanted[1];
  best.checked = /&best/.test(location.hash);
  select.addEventListener('change', apply);
  best.addEventListener('change', apply);
  apply();
})();
"""


@dataclass
class Pages:
    files: dict[str, str]  # page file name -> HTML
    galleries: dict[str, str]  # variant -> its gallery page


def render(
    output: str,
    names: list[str],
    stats: dict[str, VariantStats],
    chosen: dict[str, list[Item]],
    per_variant: int,
    seed: int,
) -> Pages:
    galleries = {name: f"gallery-{i}.html" for i, name in enumerate(names)}
    nav = _nav(names, galleries)
    files = {"index.html": _index(output, names, stats, galleries, nav), "errors.html": _errors(names, stats, nav)}
    for name in names:
        files[galleries[name]] = _gallery(name, stats[name], chosen[name], per_variant, seed, nav)
    return Pages(files, galleries)


def _page(title: str, nav: str, body: str, script: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n{nav}\n{body}\n"
        + (f"<script>{script}</script>\n" if script else "")
        + "</body></html>\n"
    )


def _nav(names: list[str], galleries: dict[str, str]) -> str:
    links = ['<a href="index.html">overview</a>']
    links += [f'<a href="{galleries[n]}">gallery: {escape(n)}</a>' for n in names]
    links.append('<a href="errors.html">errors</a>')
    return "<nav>" + "".join(links) + "</nav>"


def _number(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}g}" if abs(x) >= 1e4 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


# ---- overview


def _index(output: str, names: list[str], stats: dict[str, VariantStats], galleries: dict[str, str], nav: str) -> str:
    total = sum(v.rows for v in stats.values())
    rows = "".join(
        f'<tr><td><a href="#v-{i}">{escape(n)}</a></td><td>{v.rows}</td><td>{v.ok}</td><td>{v.passed}</td>'
        f"<td>{v.failed_checks}</td><td>{v.filtered}</td><td>{v.error}</td>"
        f'<td class="text"><a href="{galleries[n]}">gallery</a></td></tr>'
        for i, (n, v) in enumerate((n, stats[n]) for n in names)
    )
    parts = [
        "<h1>anyv2v-batch report</h1>",
        f"<p>Output <code>{escape(output)}</code>: {total} pairs in {len(names)} variant(s). "
        f"Made by anyv2v-batch {escape(__version__)}.</p>",
        '<table id="counts"><tr><th>variant</th><th>pairs</th><th>ok</th><th>passed</th><th>failed checks</th>'
        f"<th>filtered</th><th>errors</th><th></th></tr>{rows}</table>",
        "<p>ok counts every pair that was made; <i>failed checks</i> are ok pairs under a score threshold "
        "(flagged, or routed to <code>filtered/</code>: <i>filtered</i>).</p>",
    ]
    for i, name in enumerate(names):
        parts.append(_variant_section(i, name, stats[name]))
    return _page("anyv2v-batch report", nav, "\n".join(parts))


def _variant_section(i: int, name: str, v: VariantStats) -> str:
    parts = [f'<section id="v-{i}" class="variant" data-variant="{escape(name)}"><h2>{escape(name)}</h2>']
    for scorer in v.scorers:
        parts.append(f"<p>Scored by <code>{escape(_scorer_line(scorer))}</code></p>")
    scored = v.scored_metrics()
    if scored:
        parts.append('<div class="hists">' + "".join(_histogram(m, v.scores[m.name]) for m in scored) + "</div>")
    else:
        parts.append("<p>No scores in this output (run <code>anyv2v-batch score</code> to add them).</p>")
    mean = v.seconds_mean()
    stage_rows = "".join(
        f"<tr><td>{s}</td><td>{_number(mean[s], 3)}</td><td>{_number(v.seconds_max[s], 3)}</td>"
        f"<td>{_number(v.seconds_total[s], 4)}</td>"
        f"<td>{f'{3600 / mean[s]:,.0f}' if mean[s] > 0 else ''}</td></tr>"
        for s in STAGES
    )
    all_stages = sum(mean.values())
    parts.append(
        f'<table class="stages"><tr><th>stage</th><th>mean s / pair</th><th>max s</th><th>total s</th>'
        f"<th>pairs / hour / worker</th></tr>{stage_rows}"
        f"<tr><th>all</th><th>{_number(all_stages, 3)}</th><th></th>"
        f"<th>{_number(sum(v.seconds_total.values()), 4)}</th>"
        f"<th>{f'{3600 / all_stages:,.0f}' if all_stages > 0 else ''}</th></tr></table>"
        f"<p>Over the {v.ok} ok pairs. read, decode and inversion are done once per clip and shared by its "
        "variants, so each variant's rows repeat them; pairs / hour / worker is 3600 / mean: the rate of one "
        "worker of that stage.</p>"
    )
    return "\n".join(parts) + "</section>"


def _scorer_line(scorer: str) -> str:
    try:
        record = json.loads(scorer)
    except ValueError:
        return scorer[:200]
    if isinstance(record, dict):
        return ", ".join(f"{k}: {record[k]}" for k in sorted(record) if not isinstance(record[k], (dict, list)))[:300]
    return scorer[:200]


def _histogram(metric: Metric, st: ScoreStats) -> str:
    """An SVG bar chart of the score's SHOWN_BINS bins over [min, max]."""
    counts, edges = st.shown(), st.edges()
    width, height, pad = 240, 80, 14
    top = max(counts) or 1
    bar = width / len(counts)
    bars = "".join(
        f'<rect class="bar" x="{i * bar:.2f}" y="{pad + height - c / top * height:.2f}" width="{bar - 1:.2f}" '
        f'height="{c / top * height:.2f}"><title>{_number(edges[i])} to {_number(edges[i + 1])}: {c} pairs</title>'
        "</rect>"
        for i, c in enumerate(counts)
    )
    direction = "higher is better" if metric.higher_is_better else "higher is worse"
    summary = st.summary()
    return (
        f'<figure class="hist" data-metric="{metric.name}" data-counts="{",".join(map(str, counts))}" '
        f'data-edges="{",".join(repr(e) for e in edges)}">'
        f'<svg width="{width}" height="{height + 2 * pad + 4}" viewBox="0 0 {width} {height + 2 * pad + 4}" '
        f'role="img" aria-label="histogram of {escape(metric.label)}">'
        f'<text x="0" y="10">{top}</text>{bars}'
        f'<text x="0" y="{height + 2 * pad + 2}">{_number(st.low)}</text>'
        f'<text x="{width}" y="{height + 2 * pad + 2}" text-anchor="end">{_number(st.high)}</text></svg>'
        f"<figcaption><b>{escape(metric.label)}</b> ({direction}): n {st.count}, mean {_number(summary['mean'])}"
        f"</figcaption></figure>"
    )


# ---- gallery


def _gallery(name: str, v: VariantStats, items: list[Item], per_variant: int, seed: int, nav: str) -> str:
    scored = v.scored_metrics()
    worst = sum(it.sample == "worst" for it in items)
    by_rank = sorted(items, key=lambda it: it.order_key)
    order = {
        it.id: i for i, it in enumerate(sorted(items, key=lambda it: (str(it.row["shard_id"]), str(it.row["key"]))))
    }
    options = '<option value="rank">worst overall</option>' + "".join(
        f'<option value="{m.name}">{escape(m.label)}</option>' for m in scored
    )
    options += '<option value="order">shard and key</option>'
    head = (
        f"<h1>{escape(name)}: gallery</h1>"
        f"<p>{len(items)} of {v.ok} ok pairs: the {worst} worst (failing checks first, then the pairs whose "
        f"lowest score ranks lowest in this variant) and {len(items) - worst} at random (seed {seed}; "
        f"<code>--per-variant {per_variant}</code>). Source as the job saw it (frames, fps, size, fitting) | "
        "edited first frame | output.</p>"
        f'<div class="controls"><label>Sort by <select id="sort">{options}</select></label>'
        '<label><input type="checkbox" id="best"> best first</label><span>showing: <b id="sorted-by">worst overall'
        "</b></span></div>"
    )
    metrics = {m.name: m.higher_is_better for m in scored} | {"rank": True, "order": True}
    cards = "".join(_card(it, rank, order[it.id], scored) for rank, it in enumerate(by_rank))
    body = head + f'<script type="application/json" id="metrics">{json.dumps(metrics)}</script>'
    body += f'<div id="gallery">{cards}</div>'
    if not items:
        body += "<p>No ok pairs.</p>"
    return _page(f"{name}: gallery", nav, body, SORT_JS)


def _card(it: Item, rank: int, order: int, scored: list[Metric]) -> str:
    row = it.row
    # a failed check is named by its threshold's path: "clip_text.min", "source_similarity.max"
    failed = {str(c).removeprefix("score_").split(".")[0] for c in (row.get("failed_checks") or [])}
    data = [f'data-rank="{rank}"', f'data-order="{order}"', f'data-sample="{it.sample}"', f'data-id="{it.id}"']
    data.append(f'data-key="{escape(str(row["key"]))}"')
    for m in scored:
        value = row.get(m.column)
        data.append(f'data-{m.name}="{"" if value is None else repr(float(value))}"')
    size = _preview_size(row)
    cells = "".join(
        _figure(it, role, caption, size)
        for role, caption in (("source", "source"), ("first", "edited first frame"), ("output", "output"))
    )
    strips = "".join(
        f'<div>{label}, frame by frame</div><img src="{it.media[role]}" loading="lazy" alt="{label} frames">'
        for role, label in (("source_strip", "source"), ("output_strip", "output"))
        if role in it.media
    )
    badges = f'<span class="badge {it.sample}">{it.sample}</span>'
    if row.get("routed") == "filtered":
        badges += '<span class="badge filtered">filtered</span>'
    elif row.get("passed") is False:
        badges += '<span class="badge failedb">failed checks</span>'
    scores = "".join(
        f"<tr><td>{escape(m.label)}</td>"
        f'<td class="{"bad" if m.name in failed else ""}">{_number(_float(row.get(m.column)))}</td></tr>'
        for m in scored
    )
    klass = "item failed" if row.get("passed") is False else "item"
    return (
        f'<div class="{klass}" {" ".join(data)}><div class="media">{cells}</div>'
        + (f'<div class="strips">{strips}</div>' if strips else "")
        + f'<div class="meta"><span class="key">{escape(str(row["key"]))}</span> '
        f"<span>({escape(str(row['shard_id']))})</span>{badges}"
        + (f'<table class="scores">{scores}</table>' if scores else "")
        + (
            f'<p class="score-error">scoring failed: {escape(str(row["score_error"]))}</p>'
            if row.get("score_error")
            else ""
        )
        + f'<p class="prompt">{escape(str(row.get("prompt") or ""))}</p></div></div>'
    )


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _preview_size(row: dict[str, Any]) -> tuple[int, int]:
    width, height = int(row.get("width") or PREVIEW_SIDE), int(row.get("height") or PREVIEW_SIDE)
    scale = min(1.0, PREVIEW_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _figure(it: Item, role: str, caption: str, size: tuple[int, int]) -> str:
    path = it.media.get(role)
    if path is None:
        why = it.missing.get(role, "not available")
        what = "source unavailable" if role == "source" else f"{caption} unavailable"
        shape = f"aspect-ratio: {size[0]} / {size[1]}"  # the box a picture would fill
        missing = f'<div class="missing" style="{shape}" title="{escape(why)}">{what}</div>'
        return f"<figure>{missing}<figcaption>{caption}</figcaption></figure>"
    image = f'<img src="{path}" width="{size[0]}" height="{size[1]}" loading="lazy" alt="{caption}">'
    if role == "output" and "mp4" in it.media:
        caption = f'output (<a href="{it.media["mp4"]}">mp4</a>)'
    return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"


# ---- errors


def _errors(names: list[str], stats: dict[str, VariantStats], nav: str) -> str:
    total = sum(stats[n].error for n in names)
    parts = [f"<h1>Errors</h1><p>{total} error rows in {len(names)} variant(s).</p>"]
    for name in names:
        v = stats[name]
        parts.append(f'<section class="errors" data-variant="{escape(name)}"><h2>{escape(name)}: {v.error} errors</h2>')
        if not v.error:
            parts.append("<p>None.</p></section>")
            continue
        kinds = "".join(
            f'<tr><td class="text">{escape(k)}</td><td>{c}</td></tr>' for k, c in v.error_kinds.most_common()
        )
        parts.append(f'<table class="kinds"><tr><th>kind</th><th>rows</th></tr>{kinds}</table>')
        rows = "".join(
            f'<tr class="error-row"><td class="text">{escape(e["shard_id"])}</td>'
            f'<td class="text">{escape(e["key"])}</td><td class="err">{escape(e["error"])}</td></tr>'
            for e in v.errors
        )
        parts.append(f'<table class="error-rows"><tr><th>shard</th><th>key</th><th>error</th></tr>{rows}</table>')
        if v.error > len(v.errors):
            parts.append(f"<p>{v.error - len(v.errors)} more not listed.</p>")
        parts.append("</section>")
    return _page("errors", nav, "\n".join(parts))
