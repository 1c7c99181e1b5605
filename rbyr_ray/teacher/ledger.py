"""The teacher ledger: every paid request, content-addressed and stored durably as soon as it completes.

A *sample key* is the SHA-256 of (model, messages, sampling parameters, sample index) — never the URL or
the API key — so the same question asked of the same model with the same settings maps to the same rows
whichever server, run or Tune trial asks it. One HTTP call that returns n choices is one `calls` row and n
`samples` rows, written in one transaction the moment the response arrives: a crash loses at most the
requests in flight, and a rerun finds every completed sample here and sends nothing for it.

    ledger = Ledger("runs/x/teacher_ledger.sqlite")
    keys = sample_keys("gpt-x", messages, {"temperature": 0.7, "max_tokens": 256}, range(2))
    ledger.lookup(keys)            # {} the first time, {key: SampleRow} once recorded

Several processes (Ray actors, Tune trials) may share one file: SQLite in WAL mode with a busy timeout,
short write transactions, and *claims* so that two processes asking for the same sample at the same time
send it once (the second waits for the first's answer).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BrokenFile

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are not evaluated at run time
    from typing import Self

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,          -- one HTTP response
    request_hash TEXT NOT NULL,        -- hash of model, messages, sampling parameters (no sample index)
    model TEXT NOT NULL,
    request_json TEXT NOT NULL,        -- model, messages, parameters: what was asked (no URL, no key)
    response_json TEXT NOT NULL,       -- the server's JSON answer
    n INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    cost_usd REAL NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    key TEXT PRIMARY KEY,              -- hash of model, messages, sampling parameters and sample index
    request_hash TEXT NOT NULL,
    sample INTEGER NOT NULL,
    call_id TEXT NOT NULL REFERENCES calls(call_id),
    text TEXT NOT NULL,
    finish_reason TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,              -- a sample being asked for right now
    owner TEXT NOT NULL,               -- host:pid of the asker
    claimed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_hash TEXT NOT NULL,
    samples TEXT NOT NULL,             -- JSON list of the sample indices that were not obtained
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""


def _digest(obj: object) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request_hash(model: str, messages: Sequence[dict], params: dict) -> str:
    """The address of a request without its sample index.

    >>> request_hash("m", [{"role": "user", "content": "hi"}], {"temperature": 0.7}) == \\
    ...     request_hash("m", [{"content": "hi", "role": "user"}], {"temperature": 0.7})
    True
    """
    return _digest({"model": model, "messages": list(messages), "params": params})


def sample_key(req_hash: str, sample: int) -> str:
    """The address of one sample: hash(model, messages, params) combined with the sample index."""
    return _digest({"request": req_hash, "sample": int(sample)})


def sample_keys(model: str, messages: Sequence[dict], params: dict, samples: Iterable[int]) -> dict[int, str]:
    """{sample index: key} for the given sample indices of one request."""
    req = request_hash(model, messages, params)
    return {int(s): sample_key(req, s) for s in samples}


def cost_usd(prompt_tokens: int, completion_tokens: int, price_prompt_1k: float, price_completion_1k: float) -> float:
    """Estimated price of a call from the per-1k-token prices in the config.

    >>> round(cost_usd(1000, 500, 0.5, 1.5), 6)
    1.25
    """
    return prompt_tokens / 1000.0 * price_prompt_1k + completion_tokens / 1000.0 * price_completion_1k


@dataclass(frozen=True)
class SampleRow:
    key: str
    sample: int
    text: str
    call_id: str
    finish_reason: str | None


@dataclass(frozen=True)
class CallRecord:
    """One completed HTTP call, ready to be recorded with its samples."""

    call_id: str
    request_hash: str
    model: str
    request_json: str
    response_json: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float
    attempts: int
    samples: list[tuple[int, str, str, str | None]]  # (sample index, key, text, finish_reason)


def this_owner() -> str:
    """Claim owner id: host and process, so that a claim of a dead local process is recognised as stale."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_dead(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: only the lease can expire it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LedgerError(BrokenFile):
    """The ledger file cannot be used: not SQLite, damaged, or locked by another writer past the busy timeout."""


def _ledger_error(path: Path, exc: sqlite3.Error, waited_s: float) -> LedgerError:
    what = " ".join(str(exc).split())
    if "locked" in what or "busy" in what:
        return LedgerError(f"{path}: the teacher ledger is locked by another writer (waited {waited_s:.1f} s: {what}); "
                           "let that process finish or stop it, or point --ledger / teacher.ledger at another file")
    return LedgerError(f"{path}: not a usable teacher ledger ({what}); move it aside or point --ledger / "
                       "teacher.ledger at another file (a new ledger asks the teacher again)")


def check_ledger(path: str | os.PathLike, busy_timeout_s: float = 10.0) -> None:
    """Open the ledger and take its write lock once, so that a broken or locked file is one line on the driver
    (LedgerError) rather than a traceback from inside a Ray actor. Creates the file when there is none."""
    with Ledger(path, busy_timeout_s) as ledger:
        ledger._write(lambda db: None)


class Ledger:
    """SQLite ledger shared by every process of a run (WAL; each process opens its own connection).

    Writes are single short transactions retried on `database is locked`, so many Ray actors can record
    completions concurrently. Open one `Ledger` per process (connections are not shared across threads).
    """

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the lock up front.
        try:
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:  # e.g. a folder where the file should be
            raise _ledger_error(self.path, exc, 0) from None
        try:
            self._retry(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            self._retry(lambda: self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}"))
            self._retry(lambda: self._db.execute("PRAGMA synchronous=NORMAL"))  # WAL + NORMAL: durable against crashes
            self._retry(lambda: self._db.executescript(_SCHEMA))
        except BaseException:
            self._db.close()
            raise

    # ----------------------------------------------------------------------------------- plumbing

    def _retry(self, fn):
        """fn(), retried while another writer holds the lock; any SQLite error at the end is a LedgerError that
        names the file (not SQLite, damaged, or still locked after the busy timeout)."""
        start = time.monotonic()
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() > start + self.busy_timeout_s:
                    raise _ledger_error(self.path, exc, time.monotonic() - start) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
                raise _ledger_error(self.path, exc, time.monotonic() - start) from None

    def _write(self, fn):
        """Run fn(cursor) inside BEGIN IMMEDIATE ... COMMIT, retrying when another writer holds the lock."""
        def attempt():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result
        return self._retry(attempt)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ reading

    def lookup(self, keys: Iterable[str]) -> dict[str, SampleRow]:
        keys = list(keys)
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._retry(lambda: self._db.execute(
            f"SELECT key, sample, text, call_id, finish_reason FROM samples WHERE key IN ({marks})", keys).fetchall())
        return {r[0]: SampleRow(*r) for r in rows}

    def spent(self) -> tuple[int, float]:
        """(tokens, cost in USD) of every call recorded so far: what a budget is compared against."""
        row = self._retry(lambda: self._db.execute(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0), COALESCE(SUM(cost_usd), 0) FROM calls"
        ).fetchone())
        return int(row[0]), float(row[1])

    def counts(self) -> dict[str, int]:
        """Row counts per table, e.g. {"calls": 12, "samples": 24, "claims": 0, "failures": 1}."""
        return {t: self._retry(lambda t=t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("calls", "samples", "claims", "failures")}

    # ------------------------------------------------------------------------------------ claims

    def claim(self, keys: Sequence[str], lease_s: float, owner: str | None = None) -> list[str]:
        """Claim the keys not yet answered and not claimed by a live asker; returns the keys now ours.

        A claim is stale when its owner is a dead process on this host or its lease has run out; a stale
        claim is taken over. Keys already in `samples` are never claimed.
        """
        owner = owner or this_owner()
        now = time.time()

        def do(db: sqlite3.Connection) -> list[str]:
            mine = []
            for key in keys:
                if db.execute("SELECT 1 FROM samples WHERE key = ?", (key,)).fetchone():
                    continue
                held = db.execute("SELECT owner, claimed_at FROM claims WHERE key = ?", (key,)).fetchone()
                if held and now - held[1] < lease_s and not _owner_dead(held[0]):
                    continue
                db.execute("INSERT OR REPLACE INTO claims (key, owner, claimed_at) VALUES (?, ?, ?)",
                           (key, owner, now))
                mine.append(key)
            return mine

        return self._write(do)

    def release(self, keys: Sequence[str]) -> None:
        """Drop claims without an answer (the request failed), so that another asker may try."""
        if keys:
            self._write(lambda db: db.executemany("DELETE FROM claims WHERE key = ?", [(k,) for k in keys]))

    # ------------------------------------------------------------------------------------ writing

    def record(self, call: CallRecord) -> None:
        """Store one completed call and its samples, and drop their claims, in one transaction."""
        now = time.time()

        def do(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO calls (call_id, request_hash, model, request_json, response_json, n, "
                "prompt_tokens, completion_tokens, latency_s, cost_usd, attempts, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call.call_id, call.request_hash, call.model, call.request_json, call.response_json,
                 len(call.samples), call.prompt_tokens, call.completion_tokens, call.latency_s, call.cost_usd,
                 call.attempts, now))
            # OR IGNORE: a sample some other asker recorded meanwhile (a lapsed lease) keeps its first answer.
            db.executemany(
                "INSERT OR IGNORE INTO samples (key, request_hash, sample, call_id, text, finish_reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, call.request_hash, idx, call.call_id, text, finish, now) for idx, key, text, finish in
                 call.samples])
            db.executemany("DELETE FROM claims WHERE key = ?", [(key,) for _, key, _, _ in call.samples])

        self._write(do)

    def record_failure(self, req_hash: str, samples: Sequence[int], error: str, attempts: int,
                       keys: Sequence[str] = ()) -> None:
        """A request that exhausted its retries (or hit the budget): kept for the report, claims released."""
        now = time.time()

        def do(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO failures (request_hash, samples, error, attempts, created_at) VALUES (?, ?, ?, ?, ?)",
                       (req_hash, json.dumps([int(s) for s in samples]), error, attempts, now))
            db.executemany("DELETE FROM claims WHERE key = ?", [(k,) for k in keys])

        self._write(do)

    def duplicate_calls(self) -> int:
        """Samples answered by more than one call (always 0: the primary key forbids it); for tests/audits."""
        row = self._retry(lambda: self._db.execute(
            "SELECT COUNT(*) FROM (SELECT request_hash, sample FROM samples GROUP BY request_hash, sample "
            "HAVING COUNT(*) > 1)").fetchone())
        return int(row[0])
