"""``make bench``: ingestion at 10k / 100k / 1M rows, each figure beside its bare baseline.

Every measurement is a separate process timed from outside by GNU ``time`` (interpreter start
and imports included, as a user runs it), with its peak resident memory; the candidates
and their baselines alternate, ``--repeats`` times (median reported). The files are written by
``scale_data`` (plain numpy, not the project's simulator).

- PostgreSQL: ``compound-learning ingest`` into a fresh database vs ``psql \\copy`` of the same
  file into an equivalent table (the same primary key and date index);
- SQLite: the same command into a fresh file vs the driver's own ``executemany`` of the same
  rows (read by the csv module) into an equivalent table, in one transaction;
- the same file loaded again (recognised by its SHA-256), and the same rows in another order
  (a different file: read, validated and compared row by row in the database), vs a first load.

    python -m compound_learning.benchmarks.scale [--sizes 10000,100000,1000000] [--repeats 3]
        [--pg-url postgresql://postgres@127.0.0.1/postgres] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from compound_learning.benchmarks import processor
from compound_learning.benchmarks.scale_data import ATTRIBUTES, write_days

BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"
DAY = date(2026, 11, 1)
BARE_COLUMNS = (
    "date date, account_id varchar(200), creative_id varchar(200), impressions bigint, clicks bigint, "
    "conversions bigint, spend double precision, revenue double precision, "
    + ", ".join(f"{a} text" for a in ATTRIBUTES)
    + ", primary key (account_id, creative_id, date)"
)


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one command, both by GNU ``time`` (a fresh small
    process: a child forked from this one would start with this interpreter's pages)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", out.name, *cmd],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")
        seconds, kilobytes = out.read().split()[-2:]
    return float(seconds), float(kilobytes) / 1024


def own_peak_mb() -> float:
    """This process's peak RSS in MB since it started (VmHWM): ``ru_maxrss`` of a child would
    carry its parent's peak, which a forked child inherits on Linux when it is larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Postgres:
    """Fresh databases on one server, made and dropped (by ``psql``) outside the timed part."""

    def __init__(self, url: str):
        self.url = urlsplit(url.replace("postgresql+psycopg2://", "postgresql://"))

    def url_of(self, database: str) -> str:
        return urlunsplit(self.url._replace(path=f"/{database}"))

    def admin(self, sql: str) -> str:
        cmd = self.psql(urlunsplit(self.url), sql)
        return subprocess.run([*cmd, "-t", "-A"], check=True, capture_output=True, text=True).stdout.strip()

    def fresh(self, name: str, template: str | None = None) -> str:
        """A new database ``name`` (empty, or a copy of the database ``template``)."""
        self.drop(name)
        self.admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url_of(name)

    def exists(self, name: str) -> bool:
        return self.admin(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"

    def drop(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}"')

    @staticmethod
    def psql(url: str, *sql: str) -> list[str]:
        u = urlsplit(url)
        cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432)]
        cmd += ["-U", u.username or "postgres", u.path.lstrip("/") or "postgres"]
        for s in sql:
            cmd += ["-c", s]
        return cmd

    def psql_run(self, url: str, *sql: str) -> None:
        """Run statements on the database of ``url`` (outside any timed part)."""
        subprocess.run(self.psql(url, *sql), check=True, capture_output=True, text=True)

    def version(self) -> str:
        return self.admin("SHOW server_version")


def _ours(url: str, path: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "compound_learning.cli", "ingest", str(path)], {
        **os.environ,
        "COMPOUND_LEARNING_DATABASE_URL": url,
        "COMPOUND_LEARNING_PARTITION_START": "2026-01-01",
        "COMPOUND_LEARNING_STATE_DIR": str(state),
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(state / "artifacts"),
    }


SQLITE_BARE = """
import csv, sqlite3, sys
db = sqlite3.connect(sys.argv[2])
db.execute("CREATE TABLE bare (%s)")
db.execute("CREATE INDEX bare_date ON bare (date)")
with open(sys.argv[1], newline="") as f:
    rows = csv.reader(f)
    header = next(rows)
    db.executemany(f"INSERT INTO bare VALUES ({', '.join('?' * len(header))})", rows)
db.commit()
"""


def _shuffled(path: Path) -> Path:
    """The same rows in another order: a different file with the same content."""
    lines = path.read_text().splitlines(keepends=True)
    out = path.with_name(path.stem + "_reordered.csv")
    out.write_text(lines[0] + "".join(reversed(lines[1:])))
    return out


def _collector(samples: dict):
    def add(name: str, figure: tuple[float, float]) -> None:
        samples.setdefault(name, []).append(figure)

    return add


def measure(sizes: list[int], repeats: int, pg_url: str | None, root: Path) -> list[dict]:
    pg = Postgres(pg_url) if pg_url else None
    results = []
    for rows in sizes:
        path = write_days(root / f"day_{rows}.csv", rows, DAY)
        again = _shuffled(path)
        samples: dict[str, list[tuple[float, float]]] = {}
        add = _collector(samples)

        for _ in range(repeats):
            state = Path(tempfile.mkdtemp(dir=root))
            if pg:
                url = pg.fresh("cl_bench_ours")
                cmd, env = _ours(url, path, state)
                add("pg ingest", _timed(cmd, env))
                add("pg same file again", _timed(cmd, env))
                cmd2, env2 = _ours(url, again, state)
                add("pg same rows, another file", _timed(cmd2, env2))
                bare = pg.fresh("cl_bench_bare")
                subprocess.run(
                    pg.psql(bare, f"CREATE TABLE bare ({BARE_COLUMNS})", "CREATE INDEX ON bare (date)"), check=True
                )
                add("pg bare COPY", _timed(pg.psql(bare, f"\\copy bare from '{path}' csv header")))
                pg.drop("cl_bench_ours")
                pg.drop("cl_bench_bare")
            db = state / "ours.db"
            cmd, env = _ours(f"sqlite:///{db}", path, state)
            add("sqlite ingest", _timed(cmd, env))
            add("sqlite same file again", _timed(cmd, env))
            cmd2, env2 = _ours(f"sqlite:///{db}", again, state)
            add("sqlite same rows, another file", _timed(cmd2, env2))
            script = SQLITE_BARE % BARE_COLUMNS.replace("double precision", "real")
            add("sqlite bare executemany", _timed([sys.executable, "-c", script, str(path), str(state / "bare.db")]))
            shutil.rmtree(state)
        for name, figures in samples.items():
            results.append(
                {
                    "rows": rows,
                    "what": name,
                    "seconds": statistics.median(s for s, _ in figures),
                    "peak_mb": max(m for _, m in figures),
                    "runs": len(figures),
                }
            )
        path.unlink()
        again.unlink()
    return results


TARGET_ROWS = 1_000_000
RATIOS = [  # (figure, baseline, how the ratio reads, target)
    ("pg ingest", "pg bare COPY", "bare / ours (≥ 0.8)", 0.8),
    ("pg same file again", "pg ingest", "again / first (≤ 0.3)", 0.3),
    ("pg same rows, another file", "pg ingest", "again / first", None),
    ("sqlite ingest", "sqlite bare executemany", "bare / ours (≥ 0.5)", 0.5),
    ("sqlite same file again", "sqlite ingest", "again / first (≤ 0.3)", 0.3),
    ("sqlite same rows, another file", "sqlite ingest", "again / first", None),
]


def table(results: list[dict]) -> str:
    by = {(r["rows"], r["what"]): r for r in results}
    out = [
        "| rows | measured | seconds | peak MB | baseline | seconds | peak MB | ratio | target |",
        "|---:|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for rows in sorted({r["rows"] for r in results}):
        for what, base, reads, target in RATIOS:
            if (rows, what) not in by or (rows, base) not in by:
                continue
            a, b = by[(rows, what)], by[(rows, base)]
            if reads.startswith("bare"):
                ratio = b["seconds"] / a["seconds"]
                ok = ratio >= target
            else:
                ratio = a["seconds"] / b["seconds"]
                ok = target is None or ratio <= target
            # the targets are set at 1M rows; below, a process start (~0.6 s) is most of a load
            verdict = "—" if target is None or rows < TARGET_ROWS else ("met" if ok else "**missed**")
            out.append(
                f"| {rows:,} | {what} | {a['seconds']:.2f} | {a['peak_mb']:.0f} | {base} | {b['seconds']:.2f} "
                f"| {b['peak_mb']:.0f} | {ratio:.2f} ({reads}) | {verdict} |"
            )
    return "\n".join(out)


def machine(pg_url: str | None) -> str:
    import pandas
    import pyarrow

    load = os.getloadavg()
    versions = [
        f"Python {platform.python_version()}",
        f"pandas {pandas.__version__}",
        f"pyarrow {pyarrow.__version__}",
        f"SQLAlchemy {version('sqlalchemy')}",
        f"SQLite {__import__('sqlite3').sqlite_version}",
    ]
    if pg_url:
        versions.append(f"PostgreSQL {Postgres(pg_url).version()}")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{date.today()}, {processor()}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"{platform.platform()}; {', '.join(versions)}; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get("COMPOUND_LEARNING_BENCH_PG_URL"))
    parser.add_argument("--write", type=Path, help="put the table into this markdown file, between its markers")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    before = machine(args.pg_url)
    with tempfile.TemporaryDirectory(prefix="cl_bench_") as root:
        results = measure(sizes, args.repeats, args.pg_url, Path(root))
    text = (
        f"Measured {before}; after: load average {os.getloadavg()[0]:.2f}. Median of {args.repeats} alternating "
        f"runs; seconds are wall time of the whole process, peak MB its maximum resident set.\n\n{table(results)}\n"
    )
    print(text)
    print(json.dumps(results, indent=1), file=sys.stderr)
    if args.write:
        doc = args.write.read_text()
        block = f"{BEGIN}\n{text}{END}"
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
        args.write.write_text(doc)


if __name__ == "__main__":
    main()
