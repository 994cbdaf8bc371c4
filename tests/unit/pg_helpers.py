"""A throwaway PostgreSQL server for the shared request log's tests (and bench/serve_load.py): Debian's own binaries,
a temporary data folder, a free loopback port, a password (so that masking it is tested for real).

Never faked: where the server cannot run (no binaries, no psycopg, root without a way to drop privileges), `why_not`
says why and the tests skip with that reason. As root the server runs as `nobody` (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_helpers import free_port

USER = "tunesmith"


def bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: $TUNESMITH_PG_BIN, Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    candidates = [os.environ.get("TUNESMITH_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    found = shutil.which("initdb")
    candidates.append(str(Path(found).parent) if found else "")
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def why_not() -> str | None:
    """Why a PostgreSQL server cannot be started here (None when it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]' or '.[postgres]')"
    if bin_dir() is None:
        return "PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql, or set $TUNESMITH_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(fsync: bool = False) -> Iterator[str]:
    """Start a PostgreSQL server; yields an admin URL (postgresql://tunesmith:PASSWORD@127.0.0.1:PORT/postgres).

    fsync off by default: the tests check rows and counts, not what survives a power cut, and it spares a shared disk.
    RuntimeError (with the server's own message) when initdb or the start fails.
    """
    bins = bin_dir()
    assert bins is not None, why_not()
    root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
    password = "pw-" + secrets.token_hex(8)
    (root / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
        shutil.chown(root / "pw", "nobody")
    port = free_port()
    data, logfile = root / "data", root / "server.log"

    def run(cmd: list[str]) -> None:
        done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = logfile.read_text()[-2000:] if logfile.exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {done.stderr.strip()[-2000:]}\n{tail}")

    try:
        run([str(bins / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={root / 'pw'}"]
            + ["-E", "UTF8", "--no-instructions"])  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync={'on' if fsync else 'off'} -c max_connections=100"
        run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60", "-o", options, "start"])
        try:
            yield f"postgresql://{USER}:{password}@127.0.0.1:{port}/postgres"
        finally:
            run([str(bins / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def new_database(admin_url: str, name: str) -> str:
    """Create an empty database `name` on the server of `admin_url`; its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name
