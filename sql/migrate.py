"""Apply the Postgres schema: `python -m sql.migrate`.

Migrations are the numbered `sql/NNN_*.sql` files, applied in order, each once, in its own transaction,
recorded in `schema_migrations` with a checksum (an edited, already-applied file is an error). The files
themselves are idempotent too (IF NOT EXISTS). A transaction-level advisory lock lets concurrent runs wait.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
_LOCK_KEY = 7_171_717


def migrations() -> List[Path]:
    return sorted(HERE.glob("[0-9][0-9][0-9]_*.sql"))


def apply(settings=None, out=sys.stdout) -> List[str]:
    import psycopg2

    from io_connectors.settings import PostgresSettings

    settings = settings or PostgresSettings.from_env()
    applied_now: List[str] = []
    conn = psycopg2.connect(**settings.connect_kwargs())
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, "
                            "checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())")
        for path in migrations():
            body = path.read_text()
            checksum = hashlib.sha256(body.encode()).hexdigest()
            with conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    cur.execute("SELECT checksum FROM schema_migrations WHERE name = %s", (path.name,))
                    row = cur.fetchone()
                    if row:
                        if row[0] != checksum:
                            raise RuntimeError(f"{path.name} changed after it was applied: add a new migration")
                        continue
                    cur.execute(body)
                    cur.execute("INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)",
                                (path.name, checksum))
                    applied_now.append(path.name)
                    print(f"applied {path.name}", file=out)
    finally:
        conn.close()
    return applied_now


def main(argv: Optional[List[str]] = None) -> int:
    names = apply()
    print(f"schema up to date ({len(migrations())} migrations, {len(names)} applied now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
