"""A parsed MLPerf result log, and the run summary our trainer writes beside it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

TOKEN = ":::MLLOG "


class LogError(ValueError):
    pass


@dataclass
class Event:
    line: int          # 1-based line number in the file
    time_ms: int
    event_type: str
    key: str
    value: Any
    metadata: dict


@dataclass
class RunLog:
    path: str
    events: list
    summary: Optional[dict] = field(default=None)  # <stem>.json written by reference.train, when present

    @classmethod
    def read(cls, path: str) -> "RunLog":
        events = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if TOKEN not in line:
                    continue
                text = line[line.index(TOKEN) + len(TOKEN):].strip()
                try:
                    d = json.loads(text)
                    events.append(Event(number, int(d["time_ms"]), d["event_type"], d["key"], d.get("value"),
                                        d.get("metadata") or {}))
                except (ValueError, KeyError, TypeError) as e:
                    raise LogError(f"{path}:{number}: not a valid MLLOG line ({e}): {text[:120]}") from None
        if not events:
            raise LogError(f"{path}: no :::MLLOG lines")
        summary = None
        stem, _ = os.path.splitext(path)
        if os.path.isfile(stem + ".json"):
            with open(stem + ".json") as f:
                summary = json.load(f)
        return cls(path, events, summary)

    def all(self, key: str) -> list:
        return [e for e in self.events if e.key == key]

    def first(self, key: str) -> Optional[Event]:
        return next((e for e in self.events if e.key == key), None)

    def value(self, key: str, default=None):
        event = self.first(key)
        return event.value if event is not None else default

    @property
    def division(self) -> Optional[str]:
        return self.value("submission_division")

    @property
    def config(self) -> Optional[dict]:
        return self.summary.get("config") if self.summary else None

    def evaluations(self) -> list:
        """(epoch_num, auc, event) for every eval_accuracy, in order."""
        return [(e.metadata.get("epoch_num"), e.value, e) for e in self.all("eval_accuracy")]
