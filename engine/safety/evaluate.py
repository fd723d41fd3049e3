"""Measure the rule layers on a labeled JSONL set: accuracy, look-alikes, evasion,
span exactness and speed.

Each line of the set is one item::

    {"id": "en-001", "text": "...", "lang": "en", "role": "prompt", "unsafe": true,
     "categories": ["violent_crimes"], "lookalike": false, "obfuscation": null,
     "variant_of": null, "spans": [[start, end, "pii"], ...]}

An item is flagged when ``Policy.triggered`` keeps any finding (warn, redact and
block all count); per category, when it keeps one of that category. ``spans``
lists the exact PII and secret spans an unsafe item must produce. An obfuscated
variant (``variant_of`` names its plain item) counts toward the catch rate only
if its plain form is flagged.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.safety.detect import detect
from engine.safety.findings import CATEGORIES, Finding
from engine.safety.lexicon import ROLES
from engine.safety.policy import Policy

LANGUAGES = ("en", "zh")
CHUNK_CHARS = 1000  # latency per 1,000 characters is timed on chunks this long
SPAN_CATEGORIES = ("pii", "secrets")


@dataclass(frozen=True)
class DevItem:
    """One labeled text of a dev set (see the module doc for the fields)."""

    id: str
    text: str
    lang: str
    role: str
    unsafe: bool
    categories: tuple[str, ...] = ()
    lookalike: bool = False
    obfuscation: str | None = None
    variant_of: str | None = None
    spans: tuple[tuple[int, int, str], ...] = ()


def _item(data: dict, where: str) -> DevItem:
    try:
        item = DevItem(
            id=str(data["id"]),
            text=str(data["text"]),
            lang=data["lang"],
            role=data.get("role", "prompt"),
            unsafe=bool(data["unsafe"]),
            categories=tuple(data.get("categories") or ()),
            lookalike=bool(data.get("lookalike", False)),
            obfuscation=data.get("obfuscation"),
            variant_of=data.get("variant_of"),
            spans=tuple((int(s), int(e), str(c)) for s, e, c in data.get("spans", [])),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad item ({e!r}).") from e
    checks = {
        f"lang {item.lang!r}": item.lang not in LANGUAGES,
        f"role {item.role!r}": item.role not in ROLES,
        f"categories {item.categories}": bool(set(item.categories) - set(CATEGORIES)),
        "unsafe disagrees with categories": item.unsafe != bool(item.categories),
        "a look-alike must be safe": item.lookalike and item.unsafe,
        "span outside the text": any(
            not 0 <= s < e <= len(item.text) for s, e, _ in item.spans
        ),
    }
    problems = [name for name, failed in checks.items() if failed]
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}.")
    return item


def read_dev_set(path: str | Path) -> list[DevItem]:
    """Read a JSONL dev set (one item per line; blank lines are skipped).

    Raises:
        ValueError: The file is unreadable, a line is not a valid item, an id
            repeats, or a ``variant_of`` names no item.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"Cannot read dev set {path}: {e}") from e
    items = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e}).") from e
            items.append(_item(data, f"{path}:{number}"))
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: repeated ids.")
    missing = {i.variant_of for i in items if i.variant_of} - set(ids)
    if missing:
        raise ValueError(f"{path}: variant_of names unknown ids {sorted(missing)}.")
    return items


@dataclass(frozen=True)
class Counts:
    """A confusion matrix for one slice of the set."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, truth: bool, predicted: bool) -> Counts:
        return Counts(
            self.tp + (truth and predicted),
            self.fp + (not truth and predicted),
            self.fn + (truth and not predicted),
            self.tn + (not truth and not predicted),
        )

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0


@dataclass(frozen=True)
class Latency:
    """CPU time of ``detect`` on one core (``time.thread_time``, fastest of the
    repeats): per item, and per 1,000 characters on chunks of about
    ``CHUNK_CHARS`` made by joining consecutive items."""

    median_ms: float
    p95_ms: float
    per_1000_chars_ms: float
    chunks: int


@dataclass(frozen=True)
class EvalReport:
    """Everything ``evaluate`` measured; ``obfuscation`` maps a kind of
    obfuscation to (caught, variants whose plain form is caught)."""

    n_items: int
    overall: Counts
    by_language: dict[str, Counts]
    by_role: dict[str, Counts]
    by_category: dict[str, Counts]
    lookalike: Counts
    obfuscation: dict[str, tuple[int, int]]
    spans_exact: int
    spans_total: int
    latency: Latency
    errors: tuple[str, ...] = field(default=())  # ids of false positives/negatives

    @property
    def obfuscation_rate(self) -> float:
        caught = sum(c for c, _ in self.obfuscation.values())
        total = sum(t for _, t in self.obfuscation.values())
        return caught / total if total else 1.0


def _time_ms(text: str, role: str, repeats: int) -> float:
    # CPU time of this thread, the fastest of a few runs: what the rules cost on
    # one core, not what the machine's other tenants cost.
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        detect(text, role)
        best = min(best, time.thread_time() - start)
    return best * 1e3


def _latency(items: list[DevItem], repeats: int) -> Latency:
    per_item = sorted(_time_ms(i.text, i.role, repeats) for i in items)
    chunks, current = [], ""
    for item in items:
        current += item.text + "\n"
        if len(current) >= CHUNK_CHARS:
            chunks.append(current)
            current = ""
    rates = [_time_ms(c, "prompt", repeats) * 1000 / len(c) for c in chunks]
    return Latency(
        median_ms=statistics.median(per_item) if per_item else 0.0,
        p95_ms=per_item[int(0.95 * (len(per_item) - 1))] if per_item else 0.0,
        per_1000_chars_ms=statistics.median(rates) if rates else 0.0,
        chunks=len(chunks),
    )


def _spans(item: DevItem, triggered: list[Finding]) -> int:
    """How many of the item's gold spans a triggered finding reproduces exactly."""
    got = {(f.start, f.end, f.category) for f in triggered}
    return sum(span in got for span in item.spans)


def _tally(counts: dict[str, Counts], key: str, truth: bool, predicted: bool) -> None:
    """Add one outcome to ``counts[key]``; mutates ``counts``."""
    counts[key] = counts.get(key, Counts()).add(truth, predicted)


def evaluate(
    items: Iterable[DevItem], policy: Policy | None = None, *, repeats: int = 3
) -> EvalReport:
    """Run ``detect`` and ``policy`` over ``items`` and measure the results.

    Args:
        items: The labeled set, e.g. from ``read_dev_set``.
        policy: Default ``Policy()``.
        repeats: Timing runs per item and per chunk; the fastest counts.

    Returns:
        The report; ``render_report`` prints it.
    """
    items, policy = list(items), policy or Policy()
    flagged: dict[str, bool] = {}
    tallies: dict[str, dict[str, Counts]] = {"lang": {}, "role": {}, "cat": {}}
    overall, lookalike = Counts(), Counts()
    spans_exact, errors = 0, []
    for item in items:
        triggered = policy.triggered(detect(item.text, item.role))
        flagged[item.id] = bool(triggered)
        overall = overall.add(item.unsafe, bool(triggered))
        _tally(tallies["lang"], item.lang, item.unsafe, bool(triggered))
        _tally(tallies["role"], item.role, item.unsafe, bool(triggered))
        predicted = {f.category for f in triggered}
        for category in CATEGORIES:
            truth = category in item.categories
            _tally(tallies["cat"], category, truth, category in predicted)
        if item.lookalike:
            lookalike = lookalike.add(False, bool(triggered))
        spans_exact += _spans(item, triggered)
        if item.unsafe != bool(triggered):
            errors.append(item.id)
    return EvalReport(
        n_items=len(items),
        overall=overall,
        by_language=tallies["lang"],
        by_role=tallies["role"],
        by_category=tallies["cat"],
        lookalike=lookalike,
        obfuscation=_obfuscation(items, flagged),
        spans_exact=spans_exact,
        spans_total=sum(len(i.spans) for i in items),
        latency=_latency(items, repeats),
        errors=tuple(errors),
    )


def _obfuscation(
    items: list[DevItem], flagged: dict[str, bool]
) -> dict[str, tuple[int, int]]:
    result: dict[str, tuple[int, int]] = {}
    for item in items:
        if item.variant_of and flagged[item.variant_of]:
            caught, total = result.get(item.obfuscation or "other", (0, 0))
            result[item.obfuscation or "other"] = (
                caught + flagged[item.id],
                total + 1,
            )
    return result


def _row(name: str, c: Counts, *, fpr: bool = True) -> str:
    cells = [name, str(c.n), f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}"]
    return "| " + " | ".join(cells + ([f"{c.fpr:.3f}"] if fpr else [])) + " |"


def _percent(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else "n/a"


def render_report(report: EvalReport, *, title: str = "") -> str:
    """The report as Markdown tables: slices, categories, then the other checks."""
    lines = [f"{title} ({report.n_items} items)", ""] if title else []
    lines += [
        "| slice | n | precision | recall | F1 | FPR |",
        "|---|---|---|---|---|---|",
    ]
    lines.append(_row("all", report.overall))
    lines += [_row(k, c) for k, c in sorted(report.by_language.items())]
    lines += [_row(k, c) for k, c in sorted(report.by_role.items())]
    lines += [
        "",
        "| category | n unsafe | precision | recall | F1 |",
        "|---|---|---|---|---|",
    ]
    for name, c in report.by_category.items():
        row = _row(name, c, fpr=False).split(" | ")
        row[1] = str(c.tp + c.fn)
        lines.append(" | ".join(row))
    lat, look = report.latency, report.lookalike
    caught = sum(c for c, _ in report.obfuscation.values())
    eligible = sum(t for _, t in report.obfuscation.values())
    lines += ["", "| check | result |", "|---|---|"]
    lines.append(f"| look-alike false positives | {_percent(look.fp, look.n)} |")
    lines.append(f"| obfuscated variants caught | {_percent(caught, eligible)} |")
    for kind, (c, t) in sorted(report.obfuscation.items()):
        lines.append(f"| - {kind} | {_percent(c, t)} |")
    spans = _percent(report.spans_exact, report.spans_total)
    lines.append(f"| PII/secret spans exact | {spans} |")
    lines.append(
        f"| latency per item | median {lat.median_ms:.3f} ms, p95 {lat.p95_ms:.3f} ms |"
    )
    lines.append(
        f"| latency per 1,000 chars | median {lat.per_1000_chars_ms:.3f} ms "
        f"({lat.chunks} chunks) |"
    )
    if report.errors:
        lines += ["", "misclassified: " + ", ".join(report.errors)]
    return "\n".join(lines)


def report_dict(report: EvalReport) -> dict:
    """The report as plain JSON-ready data, with the derived rates."""

    def counts(c: Counts) -> dict:
        rates = {"precision": c.precision, "recall": c.recall, "f1": c.f1}
        return {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn, **rates, "fpr": c.fpr}

    return {
        "n_items": report.n_items,
        "overall": counts(report.overall),
        "by_language": {k: counts(c) for k, c in report.by_language.items()},
        "by_role": {k: counts(c) for k, c in report.by_role.items()},
        "by_category": {k: counts(c) for k, c in report.by_category.items()},
        "lookalike_fpr": report.lookalike.fpr,
        "lookalike_items": report.lookalike.n,
        "obfuscation": {k: list(v) for k, v in report.obfuscation.items()},
        "obfuscation_rate": report.obfuscation_rate,
        "spans_exact": report.spans_exact,
        "spans_total": report.spans_total,
        "latency": asdict(report.latency),
        "errors": list(report.errors),
    }
