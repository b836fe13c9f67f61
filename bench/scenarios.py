"""Scenarios 2-6 against a live local cluster. Each is bounded in count and time and stops by itself."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp

from bench.core import bench_job
from bench.harness import Api, BenchCluster, attempts_of, poll
from bench.stats import progress, summary


def _others(cluster: BenchCluster, leader: str) -> str:
    return next(n for n in cluster.running() if n != leader)


async def _submit_all(api: Api, node: str, specs: list[dict[str, Any]], concurrency: int) -> list[str]:
    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = []

    async def one(spec: dict[str, Any]) -> None:
        key = uuid.uuid4().hex
        async with sem:
            code = 0
            for _ in range(20):
                try:
                    code, jid = await api.submit(node, spec, key)
                except (aiohttp.ClientError, TimeoutError):
                    code, jid = 0, None
                if code == 201 and jid:
                    ids.append(jid)
                    return
                await asyncio.sleep(0.2)
            raise RuntimeError(f"submit failed: HTTP {code}")

    await asyncio.gather(*(one(s) for s in specs))
    return ids


# ---------------------------------------------------------------------- 2. replicated throughput


async def throughput(cluster: BenchCluster, jobs: int, tasks_per_job: int, core_rate: float) -> dict[str, Any]:
    n = jobs * tasks_per_job
    progress(f"throughput: {jobs} jobs x {tasks_per_job} tasks on {cluster.total_agents} simulated agents")
    leader = cluster.wait_healthy(60)
    terms_before = cluster.terms()
    api = Api(cluster)
    try:
        # Submit everything with a start time in the future, so placement starts at once on a full queue.
        hold_s = 5.0 + n / 3_000
        t_submit = time.time()
        not_before = t_submit + hold_s
        specs = [bench_job(f"tp{j}", tasks_per_job, not_before) for j in range(jobs)]
        ids = await _submit_all(api, leader, specs, 2)
        submitted_at = time.time()
        if submitted_at > not_before:
            progress(f"throughput: submission took {submitted_at - t_submit:.1f}s, past the hold time")
        follower = _others(cluster, leader)
        timeout = 60 + n / 2_000
        await poll("all throughput jobs to finish", lambda: api.jobs_settled(follower), timeout, 0.25)
        settled_at = time.time()
        details = await api.fetch_jobs(follower, ids, 4)
    finally:
        await api.close()
    terms_after = cluster.terms()
    atts = attempts_of(details)
    launched = sorted(a["launched_at"] for a in atts)
    finished = sorted(a["finished_at"] for a in atts if a["finished_at"] is not None)
    # placement can start at not_before; if submission overran it, from the first launch (flagged)
    overran = submitted_at > not_before
    start = launched[0] if overran and launched else not_before
    place_window = max(launched[-1] - start, 0.001) if launched else float("nan")
    done_window = finished[-1] - start if finished else float("nan")
    placed = len({(a["id"].rsplit("/", 1)[0]) for a in atts})
    rate = placed / place_window if place_window > 0 else 0.0
    out = {
        "jobs": jobs,
        "tasks": n,
        "agents": cluster.total_agents,
        "attempts": len(atts),
        "tasks_placed": placed,
        "complete_jobs": sum(1 for d in details if d["state"] == "complete"),
        "placements_per_s": rate,
        "finished_per_s": len(finished) / done_window if done_window > 0 else 0.0,
        "place_window_s": place_window,
        "finish_window_s": done_window,
        "first_launch_after_start_s": launched[0] - start if launched else None,
        "submit_s": submitted_at - t_submit,
        "submission_overran_hold": overran,
        "settled_after_start_s": settled_at - start,
        "ratio_to_core": rate / core_rate if core_rate else None,
        "elections": max(terms_after.values()) - max(terms_before.values()),
        "terms_before": terms_before,
        "terms_after": terms_after,
    }
    progress(
        f"throughput: {rate:,.0f} placements/s committed ({placed:,} in {place_window:.2f}s), "
        f"ratio to core {out['ratio_to_core'] or 0:.2f}, elections during run: {out['elections']}"
    )
    return out


# ---------------------------------------------------------------------- 3. latency


async def _started(api: Api, node: str, ids: list[str], timeout: float) -> dict[str, float]:
    """job id -> started_at of its first attempt, for every job (waits until each has one)."""
    out: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    todo = list(ids)
    while todo and time.monotonic() < deadline:
        got = await api.fetch_jobs(node, todo, 16)
        for j in got:
            atts = attempts_of([j])
            if atts and atts[0]["started_at"] is not None:
                out[j["id"]] = atts[0]["started_at"]
        todo = [i for i in todo if i not in out]
        if todo:
            await asyncio.sleep(0.2)
    return out


async def open_loop(cluster: BenchCluster, rate: int, duration_s: float) -> dict[str, Any]:
    count = max(1, int(rate * duration_s))
    progress(f"latency: open loop {rate}/s for {duration_s:.0f}s ({count} one-task jobs)")
    leader = cluster.wait_healthy(60)
    api = Api(cluster, limit=512)
    sent: dict[str, float] = {}
    acked: list[float] = []
    errors = 0
    try:
        loop = asyncio.get_running_loop()
        wall0 = time.time() + 0.2
        mono0 = loop.time() + 0.2
        late: list[float] = []

        async def one(i: int) -> None:
            nonlocal errors
            intended = wall0 + i / rate
            try:
                code, jid = await api.submit(leader, bench_job(f"lat{rate}-{i}", 1))
            except Exception:
                errors += 1
                return
            if code == 201 and jid:
                sent[jid] = intended
                acked.append(time.time() - intended)
            else:
                errors += 1

        tasks = []
        for i in range(count):
            delay = mono0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late.append(-delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.wait_for(asyncio.gather(*tasks), duration_s + 60)
        send_span = loop.time() - mono0
        started = await _started(api, _others(cluster, leader), list(sent), 60)
    finally:
        await api.close()
    lat_ms = [(started[j] - sent[j]) * 1000 for j in started]
    out: dict[str, Any] = {
        "rate": rate,
        "requested": count,
        "accepted": len(sent),
        "errors": errors,
        "started": len(started),
        "achieved_send_rate": count / send_span if send_span > 0 else None,
        "max_send_lag_ms": max(late) * 1000 if late else 0.0,
        "submit_to_running_ms": summary(lat_ms),
        "submit_ack_ms": summary([a * 1000 for a in acked]),
        "samples_ms": lat_ms,
    }
    s = out["submit_to_running_ms"]
    if s["n"]:
        progress(f"latency @{rate}/s: submit->RUNNING p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms (n={s['n']})")
    return out


async def sequential(cluster: BenchCluster, count: int) -> dict[str, Any]:
    progress(f"latency: {count} sequential submissions (each waits for RUNNING)")
    leader = cluster.wait_healthy(60)
    api = Api(cluster, limit=4)
    lat_ms: list[float] = []
    try:
        for i in range(count):
            t0 = time.time()
            code, jid = await api.submit(leader, bench_job(f"seq-{i}", 1))
            if code != 201 or not jid:
                continue

            async def started(jid: str = jid) -> float | None:
                j = await api.job(leader, jid)
                atts = attempts_of([j]) if j else []
                return atts[0]["started_at"] if atts and atts[0]["started_at"] is not None else None

            s = await poll("sequential job to run", started, 10, 0.002)
            lat_ms.append((s - t0) * 1000)
    finally:
        await api.close()
    out: dict[str, Any] = {"count": count, "submit_to_running_ms": summary(lat_ms), "samples_ms": lat_ms}
    sm = out["submit_to_running_ms"]
    if sm["n"]:
        progress(f"latency sequential: p50 {sm['p50']:.1f} ms, p99 {sm['p99']:.1f} ms")
    return out


# ---------------------------------------------------------------------- 4. failover


async def failover(cluster: BenchCluster, trials: int, delay_s: float = 0.15) -> dict[str, Any]:
    progress(f"failover: {trials} trials of SIGKILL to the leader")
    rows: list[dict[str, Any]] = []
    api = Api(cluster, limit=8)
    try:
        for k in range(trials):
            leader = cluster.wait_healthy(90)
            old_term = int(cluster.status(leader)["term"])
            survivors = [n for n in cluster.running() if n != leader]
            spec = bench_job(f"fo{k}", 1, time.time() + delay_s)
            code, jid = await api.submit(leader, spec)
            if code != 201 or jid is None:
                raise RuntimeError(f"failover submit failed: {code}")
            cluster.sample_peaks([leader])
            t_kill = time.time()
            cluster.lc.kill(leader)  # SIGKILL

            async def new_leader(survivors: list[str] = survivors, old: str = leader) -> float | None:
                got = await asyncio.to_thread(cluster.leader, survivors)
                return time.time() if got is not None and got != old else None

            async def launched(jid: str = jid, node: str = survivors[0]) -> dict[str, Any] | None:
                j = await api.job(node, jid)
                atts = attempts_of([j]) if j else []
                return atts[0] if atts else None

            t_leader_task = asyncio.create_task(poll("a new leader", new_leader, 30, 0.01))
            att = await poll("the first launch by the new leader", launched, 30, 0.01)
            t_leader = await t_leader_task
            row = {
                "trial": k,
                "killed": leader,
                "old_term": old_term,
                "new_term": att["term"],
                "leader_s": t_leader - t_kill,
                "first_launch_s": att["launched_at"] - t_kill,
                "bounded_by_not_before": att["launched_at"] - spec["not_before"] < 0.02,
            }
            rows.append(row)
            progress(
                f"failover {k + 1}/{trials}: new leader after {row['leader_s']:.3f}s, "
                f"first launch after {row['first_launch_s']:.3f}s (term {old_term} -> {att['term']})"
            )
            t0 = time.monotonic()
            cluster.start([leader])
            cluster.wait_healthy(90)
            row["recovered_s"] = time.monotonic() - t0
    finally:
        await api.close()
    return {
        "trials": rows,
        "first_launch_s": summary([r["first_launch_s"] for r in rows]),
        "leader_s": summary([r["leader_s"] for r in rows]),
        "recovered_s": summary([r["recovered_s"] for r in rows]),
        "bounded_by_not_before": sum(1 for r in rows if r["bounded_by_not_before"]),
        "not_before_delay_s": delay_s,
    }


# ---------------------------------------------------------------------- 5. C1M-style


async def c1m(cluster: BenchCluster, jobs: int, tasks_per_job: int, timeout_s: float) -> dict[str, Any]:
    n = jobs * tasks_per_job
    progress(f"c1m: {jobs} jobs x {tasks_per_job} tasks = {n:,} on {cluster.total_agents} simulated agents")
    leader = cluster.wait_healthy(300)
    follower = _others(cluster, leader)
    api = Api(cluster, limit=16)
    mem_samples: list[dict[str, Any]] = []
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        t0 = time.monotonic()
        while not stop_sampling.is_set():
            cluster.sample_peaks()
            mem_samples.append({"t": time.monotonic() - t0, **{k: v[0] for k, v in cluster.memory().items()}})
            try:
                await asyncio.wait_for(stop_sampling.wait(), 1.0)
            except TimeoutError:
                pass

    sampler = asyncio.create_task(sample())
    try:
        t0 = time.time()
        ids = await _submit_all(api, leader, [bench_job(f"c{j}", tasks_per_job) for j in range(jobs)], 4)
        submitted_s = time.time() - t0
        progress(f"c1m: all {jobs} jobs committed after {submitted_s:.1f}s")
        await poll("every C1M job to finish", lambda: api.jobs_settled(follower), timeout_s, 0.5)
        settled_s = time.time() - t0
        # the last jobs in scheduling order are placed last
        tail = await api.fetch_jobs(follower, ids[-3:], 3)
        first = await api.fetch_jobs(follower, ids[:1], 1)
    finally:
        stop_sampling.set()
        await sampler
        await api.close()
    tail_atts = attempts_of(tail)
    all_placed_s = max(a["launched_at"] for a in tail_atts) - t0 if tail_atts else None
    first_atts = attempts_of(first)
    first_launch_s = min(a["launched_at"] for a in first_atts) - t0 if first_atts else None
    progress(f"c1m: all placed after {all_placed_s:.1f}s, all finished after {settled_s:.1f}s")
    disk = cluster.disk()
    # restart: every node stops (SIGTERM) and starts again from its journal and snapshot
    cluster.sample_peaks()
    peaks = dict(cluster.peak_mb)
    t_r = time.monotonic()
    cluster.lc.stop()
    stop_s = time.monotonic() - t_r
    t_r = time.monotonic()
    cluster.start()
    restart_leader = cluster.wait_healthy(600)
    restart_s = time.monotonic() - t_r
    progress(f"c1m: cluster restart to healthy {restart_s:.1f}s (stop {stop_s:.1f}s)")
    code, body = cluster.lc.api(restart_leader, "GET", f"/v1/jobs/{ids[-1]}")
    return {
        "jobs": jobs,
        "tasks": n,
        "agents": cluster.total_agents,
        "submit_s": submitted_s,
        "first_launch_s": first_launch_s,
        "all_placed_s": all_placed_s,
        "all_finished_s": settled_s,
        "placements_per_s": n / all_placed_s if all_placed_s else None,
        "peak_rss_mb": peaks,
        "disk": disk,
        "stop_s": stop_s,
        "restart_to_healthy_s": restart_s,
        "state_survived_restart": code == 200 and body.get("state") == "complete",
        "rss_samples": mem_samples,
    }


# ---------------------------------------------------------------------- 6. soak


async def soak(cluster: BenchCluster, seconds: float, jobs_per_s: float, tasks_per_job: int) -> dict[str, Any]:
    progress(f"soak: {jobs_per_s:.0f} jobs/s x {tasks_per_job} tasks for {seconds:.0f}s, sampling RSS")
    leader = cluster.wait_healthy(60)
    api = Api(cluster, limit=64)
    samples: list[dict[str, Any]] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    sent = 0
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        count = int(seconds * jobs_per_s)
        pending: set[asyncio.Task[None]] = set()
        next_sample = t0

        async def one(i: int) -> None:
            nonlocal errors
            try:
                code, why = await api.submit(leader, bench_job(f"soak{i}", tasks_per_job))
                if code != 201:
                    errors += 1
                    kind = f"{code} {why}"
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1
            except Exception as e:
                errors += 1
                error_kinds[type(e).__name__] = error_kinds.get(type(e).__name__, 0) + 1

        for i in range(count):
            now = loop.time()
            if now >= next_sample:
                mem = cluster.memory()
                disk = cluster.disk()
                samples.append(
                    {
                        "t": now - t0,
                        "rss_mb": {k: v[0] for k, v in mem.items()},
                        "journal_bytes": {k: v.get("raft.journal", 0) for k, v in disk.items()},
                    }
                )
                next_sample = now + max(1.0, seconds / 60)
            delay = t0 + i / jobs_per_s - now
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.wait_for(asyncio.gather(*pending), 60)
        mem = cluster.memory()
        samples.append({"t": loop.time() - t0, "rss_mb": {k: v[0] for k, v in mem.items()}, "journal_bytes": {}})
        await poll("soak jobs to finish", lambda: api.jobs_settled(_others(cluster, leader)), 120, 0.5)
    finally:
        await api.close()
    slopes = {}
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
    for node in cluster.nodes:
        pts = [(s["t"], s["rss_mb"][node]) for s in half if node in s["rss_mb"]]
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            slopes[node] = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]) * 60
    out = {
        "seconds": seconds,
        "jobs_per_s": jobs_per_s,
        "tasks_per_job": tasks_per_job,
        "jobs_sent": sent,
        "errors": errors,
        "error_kinds": error_kinds,
        "rss_slope_mb_per_min_second_half": slopes,
        "samples": samples,
        "disk_end": cluster.disk(),
    }
    progress(f"soak: sent {sent} jobs, errors {errors} {error_kinds}; RSS slope (MB/min, 2nd half): {slopes}")
    return out
