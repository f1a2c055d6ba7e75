"""A content-addressed cache of judge generations (SQLite), shared across runs and processes.

The key is SHA-256 over (judge fingerprint, prompt hash, image hashes, decoding parameters),
so re-running a judge on the same prompts — after changing only the aggregation, the metrics
or the output file — regenerates nothing, and any change to the model files, the template,
the item or the decoding misses the cache. SQLite's own locking makes concurrent runs
(``pytest -n 2``, two terminals) safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLMGUARD_CACHE") or Path.home() / ".cache" / "llmguard").expanduser()


def default_cache_path() -> Path:
    return default_cache_dir() / "eval" / "generations.sqlite"


def cache_key(model_fingerprint: str, prompt_sha: str, image_sha: str | None, decoding: dict[str, Any]) -> str:
    payload = json.dumps(
        {"model": model_fingerprint, "prompt": prompt_sha, "image": image_sha, "decoding": decoding},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    """``get(key) -> str | None`` and ``put(key, text)`` over one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, output TEXT NOT NULL, created REAL NOT NULL)"
        )
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT output FROM generations WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return str(row[0])

    def put_many(self, entries: list[tuple[str, str]]) -> None:
        if not entries:
            return
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO generations (key, output, created) VALUES (?, ?, ?)",
                [(k, v, now) for k, v in entries],
            )
            self._db.execute("COMMIT")
        except Exception:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
