"""Replays, on chDB (a current ClickHouse engine in process), the SQL that
Strata sent to ClickHouse 18.16 in tests/chdb_compat.rs, and compares the
answers.

Input (a JSON file, argv[1]):
  path      a fresh directory for chDB's session (MergeTree tables on disk)
  ddl       statements in the order 18.16 ran them (CREATE DATABASE/TABLE/VIEW)
  tables    {"db.table": "file.tsv"}: each table's rows as 18.16 returned them
            (TabSeparated, in the table's column order)
  queries   [{"sql": ..., "expected": TabSeparated text from 18.16}]
Output (stdout, one JSON object): chDB's ClickHouse version, counts, and
every statement that failed or answered differently. Exit 0 even then: the
test decides.
"""

import json
import math
import sys

import chdb
from chdb import session as chs


def fields_equal(a, b):
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def same_answer(got, expected):
    """Equal as multisets of rows (a query without ORDER BY may return
    rows in any order), numbers compared with a relative tolerance of 1e-9
    (float printing may differ in the last digit between versions)."""
    g = sorted(l for l in got.split("\n") if l)
    e = sorted(l for l in expected.split("\n") if l)
    if len(g) != len(e):
        return False
    for gl, el in zip(g, e):
        gf, ef = gl.split("\t"), el.split("\t")
        if len(gf) != len(ef) or not all(fields_equal(a, b) for a, b in zip(gf, ef)):
            return False
    return True


def main():
    spec = json.load(open(sys.argv[1]))
    s = chs.Session(spec["path"])
    run = lambda sql, fmt="TabSeparated": s.query(sql, fmt).bytes().decode()
    out = {
        "version": run("SELECT version()").strip(),
        "chdb": chdb.__version__,
        "ddl": 0,
        "tables": 0,
        "rows": 0,
        "queries": 0,
        "failures": [],
    }
    for sql in spec["ddl"]:
        try:
            run(sql)
            out["ddl"] += 1
        except Exception as e:  # noqa: BLE001 - reported, the test fails
            out["failures"].append({"sql": sql, "error": str(e)})
    for table, path in spec["tables"].items():
        db, name = table.split(".", 1)
        try:
            columns = run(
                f"SELECT name, type FROM system.columns WHERE database = '{db}' AND table = '{name}'"
                # SELECT * (how the rows were taken) leaves these out.
                " AND default_kind NOT IN ('ALIAS', 'MATERIALIZED', 'EPHEMERAL') ORDER BY position"
            )
            structure = ", ".join(
                f"`{n}` {t}" for n, t in (l.split("\t") for l in columns.split("\n") if l)
            )
            # optimize_on_insert = 0: keep every row as 18.16 holds them
            # (its parts unmerged); by default a Replacing table would
            # collapse same-key rows within the one insert, as a merge does.
            run(
                f"INSERT INTO {table} SELECT * FROM file('{path}', 'TabSeparated', '{structure}')"
                " SETTINGS optimize_on_insert = 0"
            )
            out["tables"] += 1
            out["rows"] += int(run(f"SELECT count() FROM {table}").strip())
        except Exception as e:  # noqa: BLE001
            out["failures"].append({"sql": f"load {table}", "error": str(e)})
    for q in spec["queries"]:
        try:
            got = run(q["sql"])
            out["queries"] += 1
            if not same_answer(got, q["expected"]):
                out["failures"].append(
                    {"sql": q["sql"], "error": "different answer", "chdb": got[:2000], "clickhouse_18": q["expected"][:2000]}
                )
        except Exception as e:  # noqa: BLE001
            out["failures"].append({"sql": q["sql"], "error": str(e)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
