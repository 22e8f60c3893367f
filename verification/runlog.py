"""A parsed MLPerf result log, and the run summary our trainer writes beside it.

The reader takes every variant that accepted submissions show: CRLF line
endings, lines that are not MLLOG (program output), a rank prefix before the
token (``[16] :::MLLOG``) with the same event repeated by every rank, and lines
without ``event_type`` (Google v0.7). What it met is kept in ``variants`` (for
the verdict), what it could not read raises LogError naming the file and line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

TOKEN = ":::MLLOG "
_RANK = re.compile(r"^\[(\d+)\]\s*$")


class LogError(ValueError):
    pass


@dataclass
class Event:
    line: int          # 1-based line number in the file
    time_ms: float
    event_type: str | None
    key: str
    value: Any
    metadata: dict


@dataclass
class Variants:
    """What the file does that a plain mllog file does not (counts, and the first line of each)."""
    crlf_lines: int = 0
    other_lines: int = 0
    no_event_type: list = field(default_factory=list)   # line numbers
    ranks: set = field(default_factory=set)
    rank_repeats: list = field(default_factory=list)    # line numbers of dropped repeats


@dataclass
class RunLog:
    path: str
    events: list
    summary: dict | None = field(default=None)  # <stem>.json written by reference.train, when present
    variants: Variants = field(default_factory=Variants)

    @classmethod
    def read(cls, path: str) -> RunLog:
        events, variants = [], Variants()
        seen: dict[str, str] = {}
        with open(path, "rb") as f:
            raw_lines = f.read().split(b"\n")
        for number, raw in enumerate(raw_lines, 1):
            if raw.endswith(b"\r"):
                variants.crlf_lines += 1
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            if TOKEN not in line:
                variants.other_lines += bool(line.strip())
                continue
            prefix, text = line.split(TOKEN, 1)
            rank = _RANK.match(prefix.strip()) if prefix.strip() else None
            if rank:
                variants.ranks.add(int(rank.group(1)))
            text = text.strip()
            try:
                d = json.loads(text)
            except ValueError as e:
                raise LogError(f"{path}:{number}: the MLLOG line is not JSON ({e}): {text[:120]}") from None
            missing = [k for k in ("time_ms", "key") if k not in d] if isinstance(d, dict) else ["an object"]
            if missing:
                raise LogError(f"{path}:{number}: the MLLOG line lacks {', '.join(missing)}: {text[:120]}")
            try:
                time_ms = float(d["time_ms"])
            except (TypeError, ValueError):
                raise LogError(f"{path}:{number}: time_ms {d['time_ms']!r} is not a number") from None
            if rank:
                # Every rank prints the same event: keep the first, count the others.
                if text in seen and seen[text] != rank.group(1):
                    variants.rank_repeats.append(number)
                    continue
                seen.setdefault(text, rank.group(1))
            if "event_type" not in d:
                variants.no_event_type.append(number)
            metadata = d.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise LogError(f"{path}:{number}: metadata {metadata!r} is not an object")
            if d["key"] == "eval_accuracy" and (not isinstance(d.get("value"), (int, float))
                                                or isinstance(d.get("value"), bool)):
                raise LogError(f"{path}:{number}: eval_accuracy value {d.get('value')!r} is not a number")
            events.append(Event(number, time_ms, d.get("event_type"), d["key"], d.get("value"), metadata))
        if not events:
            raise LogError(f"{path}: no :::MLLOG lines")
        summary = None
        stem, _ = os.path.splitext(path)
        if os.path.isfile(stem + ".json"):
            try:
                with open(stem + ".json") as f:
                    summary = json.load(f)
            except ValueError as e:
                raise LogError(f"{stem}.json: the run summary is not JSON ({e})") from None
        return cls(path, events, summary if isinstance(summary, dict) else None, variants)

    def all(self, key: str) -> list:
        return [e for e in self.events if e.key == key]

    def first(self, key: str) -> Event | None:
        return next((e for e in self.events if e.key == key), None)

    def value(self, key: str, default=None):
        event = self.first(key)
        return event.value if event is not None else default

    @property
    def division(self) -> str | None:
        return self.value("submission_division")

    @property
    def config(self) -> dict | None:
        return self.summary.get("config") if self.summary else None

    def evaluations(self) -> list:
        """(epoch_num, auc, event) for every eval_accuracy, in order."""
        return [(e.metadata.get("epoch_num"), e.value, e) for e in self.all("eval_accuracy")]

    def run_stop_line(self) -> float:
        stop = self.first("run_stop")
        return stop.line if stop else float("inf")

    def scored_evaluations(self) -> list:
        """The evaluations that count: those before run_stop."""
        limit = self.run_stop_line()
        return [e for e in self.evaluations() if e[2].line < limit]
