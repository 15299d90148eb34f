"""What the report shows of a job's metadata, read as a stream: counts, timings, score histograms and
the sample of pairs a gallery shows.

Nothing is read whole: the metadata is streamed per shard in record batches of the columns a pass
needs, worked on as arrays, in three passes (counts and ranges; histograms; the sample), holding per
variant only fixed-size histograms, the worst N rows and N random ones. Only the rows that may enter
the sample become Python objects. The random sample is the N pairs with the smallest hash of (seed,
shard, key, variant): deterministic, and the same whatever the order of the shards or rows.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.evaluation import METRICS as ALL_METRICS
from anyv2v_batch.operators.storage import filesystem, join, list_files
from anyv2v_batch.operators.work import one_line


@dataclass(frozen=True)
class Metric:
    name: str  # the column is score_<name>
    label: str
    higher_is_better: bool = True

    @property
    def column(self) -> str:
        return f"score_{self.name}"


# the score columns a job may write (evaluation.METRICS); source similarity near 1 means the edit did not
# happen, so its worst values are its highest
LOWER_IS_BETTER = {"source_similarity"}
METRICS = tuple(Metric(m, m.replace("_", " ").replace("clip", "CLIP"), m not in LOWER_IS_BETTER) for m in ALL_METRICS)
STAGES = ("read", "decode", "editor", "inversion", "sampler", "scorer", "encode")  # operators/encode.STAGES
DIGESTS = ("json_sha256", "mp4_sha256", "png_sha256")  # operators/encode.PAIR_MEMBERS: checked on reading them
COLUMNS = (
    "shard_id", "key", "variant", "status", "error", "source_shard", "prompt", "frames", "fps", "width", "height",
    "passed", "failed_checks", "routed", "scorer", "score_error",
    *(m.column for m in METRICS), *(f"seconds_{s}" for s in STAGES),
    *DIGESTS,
)  # fmt: skip
FINE_BINS = 1000  # the histogram kept per score; percentiles come from it
SHOWN_BINS = 20  # the histogram drawn (FINE_BINS is a multiple: each drawn bar sums whole fine bins)
MAX_ERRORS = 1000  # error rows listed per variant (all are counted)
MAX_ERROR_KINDS = 50  # distinct error kinds counted by name per variant; more go under "other"
PREVIEW_SIDE = 256  # the longer side of the gallery's previews, in pixels
BATCH_ROWS = 4096


# ---- reading the metadata


def metadata_files(output: str) -> list[str]:
    return list_files(join(output, "metadata"), ".parquet")


def iter_batches(files: Iterable[str], columns: Iterable[str] = COLUMNS) -> Iterator[pa.RecordBatch]:
    """Record batches of the metadata files, in file order, with those of `columns` a file has (an
    older output lacks the score columns: the accessors below read them as null)."""
    import pyarrow.parquet as pq

    wanted = list(columns)
    for url in files:
        fs, path = filesystem(url)
        try:
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                names = set(parquet.schema_arrow.names)
                missing = {"key", "variant", "status"} - names
                if missing:
                    raise AnyV2VError(f"{url} is not an anyv2v-batch metadata file (no {', '.join(sorted(missing))})")
                present = [c for c in wanted if c in names]
                yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=present)
        except AnyV2VError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged file: one line naming it
            raise AnyV2VError(f"cannot read {url}: {one_line(e)}") from None


def _column(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    index = batch.schema.get_field_index(name)
    return batch.column(index) if index >= 0 else None


def strings(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A text column as an object array, null and absent as ""."""
    column = _column(batch, name)
    if column is None:
        return np.full(batch.num_rows, "", dtype=object)
    text = pc.fill_null(column.cast(pa.string()), "")
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def floats(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A number column as float64, null, absent and non-finite as NaN."""
    column = _column(batch, name)
    if column is None:
        return np.full(batch.num_rows, np.nan)
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


def flags(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A boolean column as int8: 1 true, 0 false, -1 null or absent."""
    column = _column(batch, name)
    if column is None:
        return np.full(batch.num_rows, -1, dtype=np.int8)
    return pc.fill_null(column.cast(pa.int8()), -1).to_numpy(zero_copy_only=False).astype(np.int8)


# ---- statistics


@dataclass
class ScoreStats:
    """One score of one variant: count, range, mean, and a histogram of FINE_BINS bins over the range."""

    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    fine: np.ndarray | None = None  # counts per fine bin, filled in the second pass
    below: np.ndarray | None = None  # values in the fine bins before each one (finish())

    def add_range(self, values: np.ndarray) -> None:
        if len(values):
            self.count += len(values)
            self.total += float(values.sum())
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))

    def bins_of(self, values: np.ndarray) -> np.ndarray:
        """The fine bin of each value (within [low, high])."""
        if self.high <= self.low:
            return np.zeros(len(values), dtype=np.int64)
        position = (values - self.low) / (self.high - self.low) * FINE_BINS
        return np.clip(position.astype(np.int64), 0, FINE_BINS - 1)

    def add_counts(self, values: np.ndarray) -> None:
        if self.fine is None:
            self.fine = np.zeros(FINE_BINS, dtype=np.int64)
        self.fine += np.bincount(self.bins_of(values), minlength=FINE_BINS)

    def finish(self) -> None:
        if self.fine is not None:
            self.below = np.concatenate([[0], np.cumsum(self.fine)[:-1]])

    def shown(self) -> list[int]:
        """The drawn histogram: SHOWN_BINS equal bins over [low, high]."""
        if self.fine is None:
            return [0] * SHOWN_BINS
        return [int(c) for c in self.fine.reshape(SHOWN_BINS, -1).sum(axis=1)]

    def edges(self) -> list[float]:
        return [self.low + (self.high - self.low) * i / SHOWN_BINS for i in range(SHOWN_BINS + 1)]

    def fraction_below(self, values: np.ndarray) -> np.ndarray:
        """The share of the variant's values below each value, interpolated inside its fine bin: strictly
        increasing in the value over the values seen, so ranking by it ranks by the value itself."""
        if self.below is None or self.high <= self.low:
            return np.full(len(values), 0.5)
        i = self.bins_of(values)
        width = (self.high - self.low) / FINE_BINS
        inside = np.clip((values - (self.low + i * width)) / width, 0.0, 1.0)
        return (self.below[i] + self.fine[i] * inside) / self.count

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.total / self.count if self.count else None,
            "min": self.low if self.count else None,
            "max": self.high if self.count else None,
            "histogram": {"edges": self.edges(), "counts": self.shown()} if self.count else None,
        }


@dataclass
class VariantStats:
    name: str
    rows: int = 0
    ok: int = 0
    error: int = 0
    passed: int = 0
    failed_checks: int = 0  # ok rows with passed == False (flagged or filtered)
    filtered: int = 0  # ok rows routed to filtered/
    seconds_total: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    seconds_max: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    scores: dict[str, ScoreStats] = field(default_factory=lambda: {m.name: ScoreStats() for m in METRICS})
    errors: list[dict[str, str]] = field(default_factory=list)  # the first MAX_ERRORS error rows
    error_kinds: Counter = field(default_factory=Counter)
    scorers: Counter = field(default_factory=Counter)

    def seconds_mean(self) -> dict[str, float]:
        return {s: self.seconds_total[s] / self.ok if self.ok else 0.0 for s in STAGES}

    def scored_metrics(self) -> list[Metric]:
        return [m for m in METRICS if self.scores[m.name].count]

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "ok": self.ok, "error": self.error, "passed": self.passed,
            "failed_checks": self.failed_checks, "filtered": self.filtered,
            "seconds_mean": self.seconds_mean(), "seconds_max": self.seconds_max,
            "seconds_total": self.seconds_total,
            "scores": {m.name: self.scores[m.name].summary() for m in self.scored_metrics()},
            "error_kinds": dict(self.error_kinds.most_common()),
            "scorers": list(self.scorers),
        }  # fmt: skip

    def add_errors(self, shard_ids: np.ndarray, keys: np.ndarray, messages: np.ndarray) -> None:
        for shard, key, message in zip(shard_ids, keys, messages, strict=True):
            if len(self.errors) < MAX_ERRORS:
                self.errors.append({"shard_id": shard, "key": key, "error": message})
            kind = error_kind(message)
            self.error_kinds[
                kind if kind in self.error_kinds or len(self.error_kinds) < MAX_ERROR_KINDS else "other"
            ] += 1


def error_kind(message: str) -> str:
    """What an error message is about: its text up to the first ':' (the stage, in the job's rows)."""
    head, colon, _ = (message or "").partition(":")
    return head.strip()[:60] if colon and head.strip() and len(head) <= 60 else "other"


def _by_variant(batch: pa.RecordBatch) -> Iterator[tuple[str, np.ndarray]]:
    variants = strings(batch, "variant")
    for name in np.unique(variants):
        yield str(name), variants == name


def gather_stats(files: list[str]) -> dict[str, VariantStats]:
    """Passes one and two over the metadata: counts, timings, errors, score ranges, then histograms."""
    stats: dict[str, VariantStats] = {}
    columns = [
        c for c in COLUMNS
        if c not in ("prompt", "source_shard", "failed_checks", "frames", "fps", "score_error", *DIGESTS)
    ]  # fmt: skip
    for batch in iter_batches(files, columns):
        ok = strings(batch, "status") == "ok"
        passed, routed = flags(batch, "passed"), strings(batch, "routed")
        seconds = {s: np.nan_to_num(floats(batch, f"seconds_{s}")) for s in STAGES}
        scores = {m.name: floats(batch, m.column) for m in METRICS}
        scorers = strings(batch, "scorer")
        for name, rows in _by_variant(batch):
            v = stats.setdefault(name, VariantStats(name))
            good, bad = rows & ok, rows & ~ok
            v.rows += int(rows.sum())
            v.ok += int(good.sum())
            v.error += int(bad.sum())
            v.passed += int((good & (passed == 1)).sum())
            v.failed_checks += int((good & (passed == 0)).sum())
            v.filtered += int((good & (routed == "filtered")).sum())
            for s in STAGES:
                v.seconds_total[s] += float(seconds[s][good].sum())
                v.seconds_max[s] = max(v.seconds_max[s], float(seconds[s][good].max(initial=0.0)))
            for m in METRICS:
                values = scores[m.name][good]
                v.scores[m.name].add_range(values[~np.isnan(values)])
            for scorer in np.unique(scorers[good]):
                if scorer and (scorer in v.scorers or len(v.scorers) < 5):
                    v.scorers[scorer] += 1
            if bad.any():
                v.add_errors(strings(batch, "shard_id")[bad], strings(batch, "key")[bad], strings(batch, "error")[bad])
    for batch in iter_batches(files, ["variant", "status", *(m.column for m in METRICS)]):
        ok = strings(batch, "status") == "ok"
        for name, rows in _by_variant(batch):
            for m in stats[name].scored_metrics():
                values = floats(batch, m.column)[rows & ok]
                stats[name].scores[m.name].add_counts(values[~np.isnan(values)])
    for v in stats.values():
        for st in v.scores.values():
            st.finish()
    return stats


def histogram(values: Iterable[float], bins: int = SHOWN_BINS) -> tuple[list[float], list[int]]:
    """(edges, counts) of the values as the report draws them, for checking: equal bins over [min, max]."""
    st = ScoreStats()
    array = np.asarray(list(values), dtype=np.float64)
    st.add_range(array)
    st.add_counts(array)
    counts = st.fine.reshape(bins, -1).sum(axis=1)
    return [st.low + (st.high - st.low) * i / bins for i in range(bins + 1)], [int(c) for c in counts]


# ---- the sample


@dataclass
class Item:
    """One pair shown in a gallery."""

    row: dict[str, Any]
    badness: float  # 0 (the worst of its variant on some score) .. 1
    sample: str = ""  # "worst" or "random"
    media: dict[str, str] = field(default_factory=dict)  # "source" / "first" / "output" / "mp4" -> report path
    missing: dict[str, str] = field(default_factory=dict)  # what could not be shown -> why

    @property
    def order_key(self) -> tuple:
        """Worst first: failing checks first, then by badness, then by shard and key."""
        return (self.row["passed"] is not False, self.badness, str(self.row["shard_id"]), str(self.row["key"]))

    @property
    def id(self) -> str:
        return digest("pair", self.row["shard_id"], self.row["key"], self.row["variant"])


def digest(*parts: Any) -> str:
    return hashlib.blake2b("\0".join(str(p) for p in parts).encode(), digest_size=8).hexdigest()


def sample_hashes(seed: int, variant: str, shard_ids: Iterable[str], keys: Iterable[str]) -> list[int]:
    """The random order of pairs: a seeded hash of (shard, key, variant), so the same pairs are drawn
    whatever the order they are read in."""
    prefix = f"sample\0{seed}\0{variant}\0"
    return [
        int.from_bytes(hashlib.blake2b(f"{prefix}{s}\0{k}".encode(), digest_size=8).digest(), "big")
        for s, k in zip(shard_ids, keys, strict=True)
    ]


def badness(batch: pa.RecordBatch, rows: np.ndarray, stats: VariantStats) -> np.ndarray:
    """How bad each pair is among its variant's: the lowest, over its scores, of the share of the
    variant's pairs that score worse than it (0: the worst on some score); 1 without scores."""
    worst = np.ones(int(rows.sum()))
    for m in stats.scored_metrics():
        values = floats(batch, m.column)[rows]
        known = ~np.isnan(values)
        below = stats.scores[m.name].fraction_below(np.where(known, values, stats.scores[m.name].low))
        share = below if m.higher_is_better else 1.0 - below
        worst = np.where(known, np.minimum(worst, share), worst)
    return worst


def choose_sample(
    files: list[str], stats: dict[str, VariantStats], per_variant: int, seed: int = 0
) -> dict[str, list[Item]]:
    """Pass three: per variant, the `per_variant` worst ok pairs (Item.order_key) and `per_variant`
    others at random (the smallest seeded hashes). A variant without scores or checks has no worst
    part: it shows 2 x per_variant random pairs instead."""
    judged = {name: bool(v.scored_metrics()) or v.failed_checks > 0 for name, v in stats.items()}
    worst = {name: _Smallest(per_variant) for name in stats}
    lucky = {name: _Smallest(2 * per_variant) for name in stats}
    for batch in iter_batches(files):
        ok = strings(batch, "status") == "ok"
        shard_ids, keys, passed = strings(batch, "shard_id"), strings(batch, "key"), flags(batch, "passed")
        for name, rows in _by_variant(batch):
            rows = rows & ok
            if not rows.any():
                continue
            index = np.flatnonzero(rows)
            bad = badness(batch, rows, stats[name])
            if judged[name]:
                # this batch's candidates: its per_variant worst by (failing, badness) and all tied with the last
                failing = (passed[index] != 0).astype(np.int8)
                order = np.lexsort((bad, failing))
                if len(order) > per_variant:
                    last = order[per_variant - 1]
                    tied = (failing[order] == failing[last]) & (bad[order] == bad[last])
                    order = order[: max(per_variant, int(np.flatnonzero(tied).max()) + 1)]
                for j in order:
                    worst[name].add(None, (batch, index[j], float(bad[j])))
            hashes = np.array(sample_hashes(seed, name, shard_ids[index], keys[index]), dtype=np.uint64)
            for j in np.argsort(hashes, kind="stable")[: 2 * per_variant]:
                lucky[name].add(int(hashes[j]), (batch, index[j], float(bad[j])))
    chosen: dict[str, list[Item]] = {}
    for name in stats:
        items = worst[name].smallest()
        for it in items:
            it.sample = "worst"
        room = per_variant if judged[name] else 2 * per_variant
        taken = {it.id for it in items}
        for it in lucky[name].smallest():
            if room and it.id not in taken:
                it.sample = "random"
                items.append(it)
                taken.add(it.id)
                room -= 1
        chosen[name] = items
    return chosen


def _item(batch: pa.RecordBatch, i: int, bad: float) -> Item:
    row = batch.slice(int(i), 1).to_pylist()[0]
    return Item({c: row.get(c) for c in COLUMNS}, bad)


class _Smallest:
    """The `n` entries with the smallest keys of a stream, in at most 2n entries of memory. An entry
    given without a key is ordered by its Item's order_key."""

    def __init__(self, n: int):
        self.n = n
        self.entries: list[tuple[Any, Item]] = []

    def add(self, key: Any, where: tuple[pa.RecordBatch, int, float]) -> None:
        item = _item(*where)
        self.entries.append((item.order_key if key is None else key, item))
        if len(self.entries) >= 2 * self.n:
            self._prune()

    def _prune(self) -> None:
        self.entries.sort(key=lambda e: e[0])
        del self.entries[self.n :]

    def smallest(self) -> list[Item]:
        self._prune()
        return [item for _, item in self.entries]
