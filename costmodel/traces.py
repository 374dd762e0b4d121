"""Request traces in the public formats people replay: BurstGPT, Azure LLM inference, Mooncake.

- BurstGPT CSV (HPMLL/BurstGPT): `Timestamp, Model, Request tokens, Response tokens, Total tokens,
  Log Type`; `Timestamp` in seconds from the trace start. Failed requests carry 0 response tokens.
- Azure LLM inference trace CSV (Azure/AzurePublicDataset, 2023 and 2024):
  `TIMESTAMP, ContextTokens, GeneratedTokens`; `TIMESTAMP` is a datetime such as
  `2023-11-16 18:15:46.6805900` (7 fractional digits, optionally with a UTC offset) or epoch seconds.
- Mooncake JSONL (kvcache-ai/Mooncake traces): one object per line with `timestamp` (milliseconds),
  `input_length`, `output_length` (other keys such as `hash_ids` are ignored).

Nothing is silently dropped: a line that cannot be parsed makes `read_trace` raise, naming its
line number (and how many others are bad); a well-formed request that cannot be served as a
generation (zero prompt or zero response tokens, as failed BurstGPT requests are logged) is kept
out of the requests but listed in `Trace.excluded` with its line number and reason.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from hardware.errors import PlannerInputError

TRACE_FORMATS = ("burstgpt", "azure", "mooncake")
COLUMNS = {
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
}
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
SHOWN = 5  # line numbers listed in an error


@dataclass(frozen=True)
class Trace:
    """Requests of a trace in arrival order: seconds since the first, prompt and output tokens."""

    path: Path
    fmt: str
    arrival_s: np.ndarray
    isl: np.ndarray
    osl: np.ndarray
    excluded: tuple[tuple[int, str], ...] = ()

    @property
    def n(self) -> int:
        return len(self.isl)

    @property
    def rate_rps(self) -> float:
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if self.n > 1 else 0.0
        return (self.n - 1) / span if span > 0 else 0.0


class _Rows:
    """Collects parsed requests, malformed lines and excluded requests while reading."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.isl: list[int] = []
        self.osl: list[int] = []
        self.lines: list[int] = []
        self.bad: list[tuple[int, str]] = []
        self.excluded: list[tuple[int, str]] = []

    def add(self, line: int, t: float, isl: int, osl: int) -> None:
        if isl == 0 or osl == 0:
            what = "prompt" if isl == 0 else "response"
            self.excluded.append((line, f"zero {what} tokens (a failed or empty request)"))
            return
        self.t.append(t)
        self.isl.append(isl)
        self.osl.append(osl)
        self.lines.append(line)


def _count(text: str | None, column: str) -> int:
    if text is None or text.strip() == "":
        raise ValueError(f"'{column}' is empty")
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"'{column}' is '{text.strip()}', not a token count") from None
    if not np.isfinite(v) or v < 0 or v != int(v):
        raise ValueError(f"'{column}' is {text.strip()}, not a whole number >= 0")
    return int(v)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _timestamp_s(text: str | None, column: str) -> float:
    """Seconds: a number as is, or a datetime (any fractional digits; naive means UTC)."""
    if text is None or text.strip() == "":
        raise ValueError(f"'{column}' is empty")
    s = text.strip()
    try:
        v = float(s)
    except ValueError:
        try:
            dt = datetime.fromisoformat(_FRACTION.sub(r"\1", s).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"'{column}' is '{s}', neither seconds nor a datetime") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    if not np.isfinite(v):
        raise ValueError(f"'{column}' is {s}, not a finite time")
    return v


def _read_csv(p: Path, fmt: str, rows: _Rows) -> None:
    cols = COLUMNS[fmt]
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in cols if c not in header]
        if missing:
            raise PlannerInputError(f"{p} line 1: column '{missing[0]}' is missing; a {fmt} trace needs "
                                    f"{', '.join(cols)}")
        reader.fieldnames = header
        for raw in reader:
            line = reader.line_num
            if None in raw:
                rows.bad.append((line, "has more fields than the header"))
                continue
            try:
                t = _timestamp_s(raw[cols[0]], cols[0])
                rows.add(line, t, _count(raw[cols[1]], cols[1]), _count(raw[cols[2]], cols[2]))
            except ValueError as exc:
                rows.bad.append((line, str(exc)))


def _read_jsonl(p: Path, rows: _Rows) -> None:
    with p.open() as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                rows.bad.append((line, f"is not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                rows.bad.append((line, "is not a JSON object"))
                continue
            try:
                missing = [k for k in MOONCAKE_KEYS if k not in obj]
                if missing:
                    raise ValueError(f"key '{missing[0]}' is missing")
                t = _timestamp_s(str(obj["timestamp"]), "timestamp") / 1e3  # Mooncake stamps are ms
                rows.add(line, t, _count(str(obj["input_length"]), "input_length"),
                         _count(str(obj["output_length"]), "output_length"))
            except ValueError as exc:
                rows.bad.append((line, str(exc)))


def guess_format(p: Path) -> str:
    """mooncake for .jsonl/.json; otherwise from the CSV header."""
    if p.suffix.lower() in (".jsonl", ".json"):
        return "mooncake"
    with p.open(newline="") as fh:
        header = {h.strip() for h in next(csv.reader(fh), [])}
    for fmt, cols in COLUMNS.items():
        if set(cols) <= header:
            return fmt
    raise PlannerInputError(f"{p}: cannot tell the trace format from its header; pass trace_format as one of "
                            f"{', '.join(TRACE_FORMATS)}")


def read_trace(path: str | Path, fmt: str | None = None) -> Trace:
    """Parse a trace; raises PlannerInputError naming the first malformed line (and counting the rest)."""
    p = Path(path)
    if not p.is_file():
        raise PlannerInputError(f"trace {p} does not exist; check the path")
    if fmt is not None and fmt not in TRACE_FORMATS:
        raise PlannerInputError(f"trace_format '{fmt}' is unknown; use one of {', '.join(TRACE_FORMATS)}")
    rows = _Rows()
    try:
        fmt = fmt or guess_format(p)
        _read_jsonl(p, rows) if fmt == "mooncake" else _read_csv(p, fmt, rows)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PlannerInputError(f"trace {p} is not a text trace ({exc}); pass a BurstGPT / Azure CSV or "
                                "Mooncake JSONL file") from None
    if rows.bad:
        line, why = rows.bad[0]
        listed = ", ".join(str(n) for n, _ in rows.bad[:SHOWN]) + (", ..." if len(rows.bad) > SHOWN else "")
        raise PlannerInputError(f"trace {p} line {line}: {why}; fix or remove it ({len(rows.bad)} malformed "
                                f"line{'s' if len(rows.bad) > 1 else ''}: {listed})")
    if not rows.t:
        raise PlannerInputError(f"trace {p} holds no servable request ({len(rows.excluded)} excluded); "
                                "pass a trace with requests")
    t = np.asarray(rows.t, dtype=float)
    order = np.argsort(t, kind="stable")  # replay in time order; sorting drops nothing
    return Trace(p, fmt, t[order] - t[order[0]], np.asarray(rows.isl, dtype=np.int64)[order],
                 np.asarray(rows.osl, dtype=np.int64)[order], tuple(rows.excluded))
