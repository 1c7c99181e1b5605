"""The teacher ledger: content addresses, durable records, claims between processes, the budget."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import subprocess
import sys
import uuid

import pytest

from rbyr_ray.config import TeacherConfig
from rbyr_ray.teacher.cached import BudgetExceeded, CachedTeacher
from rbyr_ray.teacher.client import TeacherClient
from rbyr_ray.teacher.ledger import CallRecord, Ledger, request_hash, sample_key, sample_keys

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Question: 2 + 2?"}]
PARAMS = {"temperature": 0.7, "max_tokens": 64}


def _call(req: str, samples: list[int], tokens: int = 10, cost: float = 0.0) -> CallRecord:
    return CallRecord(call_id=uuid.uuid4().hex, request_hash=req, model="m", request_json="{}", response_json="{}",
                      prompt_tokens=tokens, completion_tokens=tokens, latency_s=0.01, cost_usd=cost, attempts=1,
                      samples=[(i, sample_key(req, i), f"text {i}\nAnswer: 4", "stop") for i in samples])


def test_keys_are_content_addresses():
    keys = sample_keys("m", MESSAGES, PARAMS, range(3))
    assert len(set(keys.values())) == 3  # the sample index is part of the address
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    assert sample_keys("m", reordered, dict(reversed(list(PARAMS.items()))), range(3)) == keys
    assert sample_keys("other-model", MESSAGES, PARAMS, range(3))[0] != keys[0]
    assert sample_keys("m", MESSAGES, {**PARAMS, "temperature": 1.0}, range(3))[0] != keys[0]


def test_record_lookup_and_no_duplicates(tmp_path):
    req = request_hash("m", MESSAGES, PARAMS)
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.record(_call(req, [0, 1]))
        ledger.record(_call(req, [1, 2]))  # sample 1 again: the first answer is kept
        found = ledger.lookup(sample_key(req, i) for i in range(4))
        assert sorted(r.sample for r in found.values()) == [0, 1, 2]
        assert ledger.counts()["samples"] == 3 and ledger.duplicate_calls() == 0
        assert ledger.spent() == (40, 0.0)
    with Ledger(tmp_path / "l.sqlite") as reopened:  # durable: another connection sees it
        assert len(reopened.lookup(sample_key(req, i) for i in range(3))) == 3


def test_claims_block_other_askers_until_released_or_stale(tmp_path):
    req = request_hash("m", MESSAGES, PARAMS)
    keys = [sample_key(req, i) for i in range(2)]
    with Ledger(tmp_path / "l.sqlite") as ledger:
        assert ledger.claim(keys, lease_s=60, owner="somehost:1") == keys
        assert ledger.claim(keys, lease_s=60, owner="otherhost:2") == []  # live claim on another host
        assert ledger.claim(keys, lease_s=0, owner="otherhost:2") == keys  # lease ran out
        ledger.release(keys)
        # A claim of a dead process on this host is stale at once (a rerun after a crash need not wait).
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        from rbyr_ray.teacher.ledger import this_owner

        host = this_owner().rpartition(":")[0]
        ledger.claim(keys, lease_s=3600, owner=f"{host}:{dead.pid}")
        assert ledger.claim(keys, lease_s=3600) == keys
        ledger.record(_call(req, [0]))
        assert ledger.claim(keys, lease_s=0, owner="x:1") == [keys[1]]  # answered samples are never claimed


def _writer(path: str, worker: int, calls: int) -> None:
    ledger = Ledger(path)
    for j in range(calls):
        req = request_hash("m", [{"role": "user", "content": f"Question: {worker}-{j}"}], PARAMS)
        ledger.record(_call(req, [0, 1]))
    ledger.close()


def test_many_processes_write_one_ledger(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    Ledger(path).close()
    # fork: the writers need only the ledger module, and spawn would re-import the whole test module.
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Ledger(path) as ledger:
        assert ledger.counts()["calls"] == 160 and ledger.counts()["samples"] == 320


def test_budget_stops_new_requests_and_keeps_completed(tmp_path):
    cfg = TeacherConfig(budget_tokens=30, samples=2)
    ledger = Ledger(tmp_path / "l.sqlite")
    client = TeacherClient("http://127.0.0.1:9/v1", "m", api_key_env=None, temperature=0.7, max_tokens=64)
    teacher = CachedTeacher(client, ledger, cfg)
    req = request_hash("m", MESSAGES, client.params)
    ledger.record(_call(req, [0, 1], tokens=20))  # 40 tokens spent: over the budget
    with pytest.raises(BudgetExceeded, match="budget_tokens=30"):
        teacher.check_budget()
    # Completed samples are still served; the missing one is not sent (port 9 would refuse it anyway).
    out = asyncio.run(teacher.samples(MESSAGES, [0, 1, 2]))
    assert out.cached == {0, 1} and out.http_requests == 0
    assert "teacher budget reached" in out.errors[2] and "kept in" in out.errors[2]
    assert ledger.counts()["claims"] == 0
    ledger.close()
