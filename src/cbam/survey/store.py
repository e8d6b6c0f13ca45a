"""Votes in an SQLite file (WAL): one row per (respondent, question); a re-vote replaces the earlier one.

Every statement binds its values as parameters. Each call opens its own connection, so the server's
worker threads never share one, and every write is committed before the call returns.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    respondent TEXT NOT NULL,
    question INTEGER NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('left', 'right', 'equal')),
    preferred TEXT NOT NULL CHECK (preferred IN ('baseline', 'cbam', 'equal')),
    voted_at REAL NOT NULL,
    PRIMARY KEY (respondent, question)
)
"""
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Vote:
    """One stored vote: the side clicked and the model it prefers."""

    respondent: str
    question: int
    side: str
    preferred: str
    voted_at: float


class VoteStore:
    """The votes file of a study."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def record(self, respondent: str, question: int, side: str, preferred: str) -> None:
        """Store a vote, replacing this respondent's earlier vote on the question."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO votes (respondent, question, side, preferred, voted_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (respondent, question) DO UPDATE SET "
                "side = excluded.side, preferred = excluded.preferred, voted_at = excluded.voted_at",
                (respondent, question, side, preferred, time.time()),
            )

    def answers(self, respondent: str) -> dict[int, str]:
        """The side this respondent chose on each question answered so far."""
        with self._connect() as db:
            rows = db.execute("SELECT question, side FROM votes WHERE respondent = ?", (respondent,)).fetchall()
        return dict(rows)

    def votes(self) -> list[Vote]:
        """Every stored vote, in question then respondent order."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT respondent, question, side, preferred, voted_at FROM votes ORDER BY question, respondent"
            ).fetchall()
        return [Vote(*row) for row in rows]
