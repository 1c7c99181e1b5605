"""Teacher throughput: N requests to the local teacher server with 100 ms latency, sent through the real request
path (async client -> ledger), with 64 in flight against one at a time; then the cached rerun.

    .venv/bin/python bench/teacher.py                     # 512 requests, 64 in flight, latency 100 ms
    .venv/bin/python bench/teacher.py --stage             # also the Ray Data stage (annotate) end to end

Goal: async / sequential wall-time ratio >= 30; the cached rerun sends 0 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rbyr_ray.config import TaskConfig, TeacherConfig
from rbyr_ray.tasks import load_task
from rbyr_ray.tasks.prompts import teacher_cot_messages
from rbyr_ray.teacher.cached import CachedTeacher
from rbyr_ray.teacher.client import TeacherClient
from rbyr_ray.teacher.ledger import Ledger
from rbyr_ray.teacher.server import LocalTeacherServer


async def _run(url: str, cfg: TeacherConfig, messages: list[list[dict]], ledger_path: Path) -> dict:
    client = TeacherClient.from_config(cfg, url)
    teacher = CachedTeacher(client, Ledger(ledger_path), cfg)
    start = time.perf_counter()
    try:
        outs = await asyncio.gather(*(teacher.samples(m, [0]) for m in messages))
    finally:
        await client.aclose()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "requests_sent": sum(o.http_requests for o in outs),
            "ledger_hits": sum(len(o.cached) for o in outs), "errors": sum(len(o.errors) for o in outs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--stage", action="store_true", help="also time annotate() as a Ray Data stage")
    args = parser.parse_args()

    task = TaskConfig(arith={"n_train": args.requests, "n_test": 1})
    records = load_task(task).train[: args.requests]
    messages = [teacher_cot_messages(r, "numeric") for r in records]
    base = {"samples": 1, "max_retries": 2, "latency_ms": args.latency_ms}
    results: dict = {"requests": len(messages), "latency_ms": args.latency_ms}
    with tempfile.TemporaryDirectory() as tmp, LocalTeacherServer("solver", task, TeacherConfig(**base)) as url:
        tmp = Path(tmp)
        fast = TeacherConfig(**base, concurrency=args.concurrency)
        results["async"] = asyncio.run(_run(url, fast, messages, tmp / "async.sqlite"))
        results["async"]["concurrency"] = args.concurrency
        results["cached_rerun"] = asyncio.run(_run(url, fast, messages, tmp / "async.sqlite"))
        seq = TeacherConfig(**base, concurrency=1)
        results["sequential"] = asyncio.run(_run(url, seq, messages, tmp / "sequential.sqlite"))
        results["ratio"] = results["sequential"]["wall_s"] / results["async"]["wall_s"]
        if args.stage:
            from rbyr_ray.ray_utils import init_ray
            from rbyr_ray.teacher.stage import annotate

            init_ray()
            for name in ("stage", "stage_cached_rerun"):
                r = annotate(records, fast, answer_type="numeric", base_url=url, ledger_path=tmp / "stage.sqlite",
                             out_path=None)
                results[name] = {"wall_s": r.wall_s, "requests_sent": r.requests_sent,
                                 "ledger_hits": r.ledger_hits, "accepted": r.accepted}

    a, s, c = results["async"], results["sequential"], results["cached_rerun"]
    print(f"teacher bench: {results['requests']} requests, server latency {args.latency_ms:.0f} ms")
    print(f"  async ({args.concurrency} in flight): {a['wall_s']:7.2f} s  {a['requests_sent'] / a['wall_s']:7.1f} req/s")
    print(f"  sequential (1 in flight):  {s['wall_s']:7.2f} s  {s['requests_sent'] / s['wall_s']:7.1f} req/s")
    print(f"  ratio sequential/async:    {results['ratio']:7.1f}x  (goal >= 30)")
    print(f"  cached rerun:              {c['wall_s']:7.3f} s  requests sent {c['requests_sent']}, "
          f"ledger hits {c['ledger_hits']}")
    if args.stage:
        for name in ("stage", "stage_cached_rerun"):
            r = results[name]
            print(f"  Ray Data {name:<19} {r['wall_s']:7.2f} s  requests sent {r['requests_sent']}, "
                  f"ledger hits {r['ledger_hits']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
