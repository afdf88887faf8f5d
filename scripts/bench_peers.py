"""The batch benchmark's peers: one reference metric computed by one peer
engine (DuckDB, Polars' lazy engine or chDB) over the archive's Parquet
files, as batch-layer/benches/recompute.rs runs it:

    python bench_peers.py <duckdb|polars|chdb> <metric> '<dir>/**/*.parquet' <threads>

One process per (engine, metric), so the peak memory printed (VmHWM) is that
query's own. Every query computes and materialises its full result (an Arrow
table; for Polars its own DataFrame, which is Arrow memory): a `count(*)`
around the query would let an engine drop the aggregates it never returns.
Each engine gets the query form that was fastest for it on this data, among
exact ones (notes at each query).

The last line printed is for recompute.rs to parse:
    result engine=E metric=M rows=N secs=S peak_mib=P check=C cpu=U
`check` is the sum of the metric's first aggregate (views, active_users,
page_views): the same events give the same figure in every engine. `cpu` is
the process's CPU seconds during the query, all threads.

Window definitions are Strata's (schemas/src/window.rs): windows are
half-open `[start, end)` on the epoch's grid; a hopping window of 5 min
sliding by 1 min starts every minute, so an event is in the 5 windows
starting at its minute and the 4 minutes before (windows starting before the
first event included); a session is a user's run of events less than 30 min
apart (an event exactly 30 min after the previous one starts a new session),
`[first, last + 30 min)`.
"""
import os
import sys
import time

MINUTE = 60_000
HOP_WINDOWS = 5  # active_users_5m: size 5 m / slide 1 m
GAP = 30 * MINUTE  # user_sessions
METRICS = ("page_views_per_minute", "active_users_5m", "user_sessions")


def duckdb_engine(metric, files, threads):
    import duckdb

    con = duckdb.connect(config={"threads": threads})
    # epoch_ms(timestamp) is the event time as epoch milliseconds (BIGINT);
    # `//` floors on BIGINT, and every time here is after 1970.
    src = f"read_parquet('{files}')"
    sql = {
        "page_views_per_minute": f"""
            SELECT epoch_ms(event_time) // {MINUTE} * {MINUTE} AS window_start,
                   page, country, count(*) AS views,
                   sum(duration_ms) AS total_duration_ms, avg(duration_ms) AS avg_duration_ms
            FROM {src} GROUP BY ALL""",
        # Each event joined to its 5 window starts. (A DISTINCT on (minute,
        # country, user) first, or unnest(range(..)), was no faster: nearly
        # every event is a distinct user in its minute and country.)
        "active_users_5m": f"""
            SELECT epoch_ms(event_time) // {MINUTE} * {MINUTE} - k * {MINUTE} AS window_start,
                   country, count(DISTINCT user_id) AS active_users
            FROM {src}, range({HOP_WINDOWS}) AS r(k) GROUP BY ALL""",
        # Gaps and islands: a session starts at a user's first event (lag is
        # NULL) or at least GAP after the previous one; the running count of
        # starts numbers a user's sessions. ROWS, not the default RANGE frame:
        # the same sums (a tie is never a start) and a little faster.
        "user_sessions": f"""
            SELECT user_id, min(t) AS window_start, max(t) + {GAP} AS window_end,
                   count(*) AS page_views, sum(duration_ms) AS total_duration_ms
            FROM (SELECT *, sum(new) OVER (PARTITION BY user_id ORDER BY t
                                           ROWS UNBOUNDED PRECEDING) AS session
                  FROM (SELECT user_id, duration_ms, t,
                               CASE WHEN t - lag(t) OVER (PARTITION BY user_id ORDER BY t) < {GAP}
                                    THEN 0 ELSE 1 END AS new
                        FROM (SELECT user_id, duration_ms, epoch_ms(event_time) AS t FROM {src})))
            GROUP BY user_id, session""",
    }[metric]
    used = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.sql("SELECT 1").to_arrow_table()  # pyarrow's import, untimed

    def run():
        # con.sql, not con.execute: a DB-API result copies the rows once more.
        return con.sql(sql).to_arrow_table()

    return f"duckdb {duckdb.__version__}", used, run


def polars_engine(metric, files, threads):
    # Read once at import: the thread pool's size cannot change afterwards.
    os.environ["POLARS_MAX_THREADS"] = str(threads)
    import polars as pl

    lf = pl.scan_parquet(files)
    t = pl.col("event_time").dt.epoch("ms")
    if metric == "page_views_per_minute":
        # A group_by on the truncated time: tumbling windows need no sorted
        # index, which group_by_dynamic requires.
        q = lf.group_by((t // MINUTE * MINUTE).alias("window_start"), "page", "country").agg(
            pl.len().alias("views"),
            pl.col("duration_ms").sum().alias("total_duration_ms"),
            pl.col("duration_ms").mean().alias("avg_duration_ms"),
        )
    elif metric == "active_users_5m":
        # group_by_dynamic needs the time sorted within each group. Its first
        # window starts at the group's first event's minute; offset -4 m
        # starts it 4 minutes earlier, so the 4 windows that start before
        # the first event and hold it are there too, as in Strata. (Each
        # event exploded into its 5 window starts, then a group_by, gives
        # the same rows in three times the time.)
        q = (
            lf.select("country", "user_id", "event_time")
            .sort("country", "event_time")
            .group_by_dynamic(
                "event_time",
                every="1m",
                period=f"{HOP_WINDOWS}m",
                offset=f"-{HOP_WINDOWS - 1}m",
                group_by="country",
                closed="left",
                label="left",
                start_by="window",
            )
            .agg(pl.col("user_id").n_unique().alias("active_users"))
        )
    else:
        # Sorted by (user, time), a session starts at a user's first event or
        # where the distance to the previous event is at least the gap; the
        # running count of starts numbers the sessions of all users at once.
        q = (
            lf.select("user_id", "duration_ms", t.alias("t"))
            .sort("user_id", "t")
            .with_columns(
                ((pl.col("user_id") != pl.col("user_id").shift(1)) | (pl.col("t").diff() >= GAP))
                .fill_null(True)
                .cum_sum()
                .alias("session")
            )
            .group_by("session")
            .agg(
                pl.col("user_id").first(),
                pl.col("t").min().alias("window_start"),
                (pl.col("t").max() + GAP).alias("window_end"),
                pl.len().alias("page_views"),
                pl.col("duration_ms").sum().alias("total_duration_ms"),
            )
        )
    used = pl.thread_pool_size()

    def run():
        # The streaming engine: as fast or faster than the in-memory one for
        # all three queries here (e.g. 0.46 s against 0.59 s for sessions).
        return q.collect(engine="streaming")

    return f"polars {pl.__version__} (lazy, streaming engine)", used, run


def chdb_engine(metric, files, threads):
    import chdb

    src = f"file('{files}', Parquet)"
    t = "toUnixTimestamp64Milli(event_time)"
    sql = {
        "page_views_per_minute": f"""
            SELECT intDiv({t}, {MINUTE}) * {MINUTE} AS window_start, page, country,
                   count() AS views, sum(duration_ms) AS total_duration_ms,
                   avg(duration_ms) AS avg_duration_ms
            FROM {src} GROUP BY window_start, page, country""",
        # uniqExact, not uniq (an approximation): the other peers count
        # exactly. One exact set per (minute, country), merged into each of
        # the 5 windows holding that minute: twice as fast as joining every
        # event to its 5 windows.
        "active_users_5m": f"""
            SELECT minute - k * {MINUTE} AS window_start, country,
                   uniqExactMerge(users) AS active_users
            FROM (SELECT intDiv({t}, {MINUTE}) * {MINUTE} AS minute, country,
                         uniqExactState(user_id) AS users
                  FROM {src} GROUP BY minute, country)
            ARRAY JOIN range({HOP_WINDOWS}) AS k
            GROUP BY window_start, country""",
        # A user's events sorted by time, split before every event at least
        # GAP after the previous one: one array per session, in one pass.
        # (lagInFrame and a running sum over windows gave the same rows in
        # nearly twice the time.) The archive's event_time and duration_ms
        # are NOT NULL columns: arrayDifference and arraySum take no Nullable.
        "user_sessions": f"""
            SELECT user_id, s[1].1 AS window_start, s[-1].1 + {GAP} AS window_end,
                   length(s) AS page_views, arraySum(e -> e.2, s) AS total_duration_ms
            FROM (SELECT user_id, arraySort(groupArray(({t}, duration_ms))) AS events
                  FROM {src} GROUP BY user_id)
            ARRAY JOIN arraySplit((e, d) -> d >= {GAP}, events,
                                  arrayDifference(arrayMap(e -> e.1, events))) AS s""",
    }[metric] + f" SETTINGS max_threads = {threads}"
    version = chdb.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
    used = (
        chdb.query(f"SELECT getSetting('max_threads') SETTINGS max_threads = {threads}", "CSV")
        .bytes()
        .decode()
        .strip()
    )
    chdb.query("SELECT 1", "ArrowTable")  # pyarrow's import (0.5 s), untimed

    def run():
        return chdb.query(sql, "ArrowTable")

    return f"chdb {chdb.__version__} (ClickHouse {version})", used, run


ENGINES = {"duckdb": duckdb_engine, "polars": polars_engine, "chdb": chdb_engine}
FIRST_AGGREGATE = {
    "page_views_per_minute": "views",
    "active_users_5m": "active_users",
    "user_sessions": "page_views",
}


def vm_kib(field):
    # VmHWM, not ru_maxrss: after fork + exec Linux reports the parent's peak
    # in ru_maxrss, while VmHWM belongs to this process's own address space.
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith(field + ":"))


def main():
    engine, metric, files, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    assert metric in METRICS, metric
    name, used_threads, run = ENGINES[engine](metric, files, threads)
    # What the engine's import alone keeps resident (chDB is a large library).
    base = vm_kib("VmRSS") / 1024
    started, cpu = time.perf_counter(), time.process_time()
    result = run()
    secs, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = vm_kib("VmHWM") / 1024
    rows = result.num_rows if hasattr(result, "num_rows") else result.height
    column = result[FIRST_AGGREGATE[metric]]
    check = column.sum() if hasattr(column, "dtype") else sum(column.to_pylist())
    print(
        f"{engine:<7} {metric:<24} {rows:>9} rows  {secs:>7.2f}s  peak RSS {peak:>6.0f} MiB"
        f" (after import {base:.0f})  threads {used_threads}  {name}"
    )
    print(
        f"result engine={engine} metric={metric} rows={rows} secs={secs:.4f} "
        f"peak_mib={peak:.1f} check={check} cpu={cpu:.2f}"
    )


if __name__ == "__main__":
    main()
