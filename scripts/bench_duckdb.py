"""The batch benchmark's reference: the three reference metrics computed by
DuckDB over the same Parquet files (see batch-layer/benches/recompute.rs).
Prints rows per metric, seconds, and peak memory."""
import sys
import time

import duckdb

files = sys.argv[1]
con = duckdb.connect()
con.execute(f"CREATE VIEW events AS SELECT epoch_ms(event_time) AS t, user_id, page, country, duration_ms FROM read_parquet('{files}')")
queries = {
    "page_views_per_minute": """
        SELECT t // 60000 * 60000 AS w, page, country, count(*) AS views,
               sum(duration_ms) AS total_duration_ms, avg(duration_ms) AS avg_duration_ms
        FROM events GROUP BY ALL""",
    "active_users_5m": """
        SELECT t // 60000 * 60000 - k * 60000 AS w, country, count(DISTINCT user_id) AS active_users
        FROM events, range(5) AS r(k) GROUP BY ALL""",
    "user_sessions": """
        SELECT user_id, min(t) AS s, max(t) + 1800000 AS e, count(*) AS page_views, sum(duration_ms) AS total_duration_ms
        FROM (SELECT *, sum(new) OVER (PARTITION BY user_id ORDER BY t) AS session
              FROM (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY user_id ORDER BY t) < 1800000 THEN 0 ELSE 1 END AS new FROM events))
        GROUP BY user_id, session""",
}
total = 0.0
for name, sql in queries.items():
    started = time.perf_counter()
    rows = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
    secs = time.perf_counter() - started
    total += secs
    print(f"duckdb  {name:<24} {rows:>10} windows  {secs:>6.2}s")
# VmHWM, not ru_maxrss: after fork + exec Linux reports the parent's peak
# in ru_maxrss, while VmHWM belongs to this process's own address space.
with open("/proc/self/status") as status:
    peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(f"duckdb peak RSS {peak:.0f} MiB, threads {threads}")
print(f"duckdb total seconds {total:.3f}")
