"""The client behind the ledger: ask for samples of a request; what the ledger holds is never sent again.

    teacher = CachedTeacher(client, Ledger(path), cfg)
    out = await teacher.samples(messages, [0, 1])
    out.texts      # {0: "12 + 7 = 19.\\nAnswer: 19", 1: "First, ..."}
    out.cached     # {0, 1} on a rerun: 0 HTTP requests

Order per request: look up the sample keys; claim the missing ones (another asker holding a live claim is
waited for, not duplicated); check the budget; send (n = the number missing, or one request per sample
where the server ignores n); record the call and its samples in one transaction as soon as it returns.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from ..config import TeacherConfig
from .client import TeacherClient, TeacherRequestError
from .ledger import CallRecord, Ledger, cost_usd, request_hash, sample_key

log = logging.getLogger(__name__)


class BudgetExceeded(RuntimeError):
    """The ledger's spend reached the configured budget: no new request is sent; completed work is kept."""


@dataclass
class SampleOutcome:
    texts: dict[int, str] = field(default_factory=dict)   # every sample obtained, by sample index
    cached: set[int] = field(default_factory=set)         # those found in the ledger (not sent by us)
    errors: dict[int, str] = field(default_factory=dict)  # samples not obtained: the final error
    # The server's finish reason per sample obtained ("stop", "length"); None where it gave none (and for ledger
    # entries recorded without one).
    finish_reasons: dict[int, str | None] = field(default_factory=dict)
    http_requests: int = 0                                # POSTs we sent, retries included
    tokens: int = 0                                       # spent by our completed calls
    cost_usd: float = 0.0


def lease_seconds(cfg: TeacherConfig) -> float:
    """How long a claim protects a request in flight: the longest one request may take, retries included."""
    return cfg.timeout_s * (cfg.max_retries + 1) + cfg.retry_backoff_max_s * cfg.max_retries + 30.0


class CachedTeacher:
    def __init__(self, client: TeacherClient, ledger: Ledger, cfg: TeacherConfig, *, poll_s: float = 0.1):
        self.client = client
        self.ledger = ledger
        self.cfg = cfg
        self.use_n = cfg.use_n
        self.lease_s = lease_seconds(cfg)
        self.poll_s = poll_s
        self.budget_message: str | None = None

    # ------------------------------------------------------------------------------------ budget

    def check_budget(self) -> None:
        """Raise BudgetExceeded when the ledger's total spend has reached a configured cap."""
        if self.cfg.budget_tokens is None and self.cfg.budget_usd is None:
            return
        tokens, cost = self.ledger.spent()
        over = []
        if self.cfg.budget_tokens is not None and tokens >= self.cfg.budget_tokens:
            over.append(f"{tokens} tokens used of budget_tokens={self.cfg.budget_tokens}")
        if self.cfg.budget_usd is not None and cost >= self.cfg.budget_usd:
            over.append(f"${cost:.4f} spent of budget_usd={self.cfg.budget_usd}")
        if over:
            self.budget_message = (f"teacher budget reached ({'; '.join(over)}): no new requests are sent; "
                                   f"completed requests are kept in {self.ledger.path}")
            raise BudgetExceeded(self.budget_message)

    # ----------------------------------------------------------------------------------- samples

    async def samples(self, messages: list[dict], indices: list[int]) -> SampleOutcome:
        """Obtain the given sample indices of one request, from the ledger or the server."""
        out = SampleOutcome()
        req = request_hash(self.client.model, messages, self.client.params)
        keys = {i: sample_key(req, i) for i in indices}
        pending = list(indices)
        while pending:
            found = self.ledger.lookup(keys[i] for i in pending)
            for i in pending:
                if keys[i] in found:
                    out.texts[i] = found[keys[i]].text
                    out.finish_reasons[i] = found[keys[i]].finish_reason
                    out.cached.add(i)
            pending = [i for i in pending if i not in out.texts]
            if not pending:
                break
            mine = set(self.ledger.claim([keys[i] for i in pending], self.lease_s))
            ours = [i for i in pending if keys[i] in mine]
            if ours:
                await self._send(messages, req, {i: keys[i] for i in ours}, out)
            # Samples another asker is fetching right now: wait for its answer (or its claim to lapse).
            pending = [i for i in pending if i not in out.texts and i not in out.errors]
            if pending:
                await asyncio.sleep(self.poll_s)
        return out

    async def _send(self, messages: list[dict], req: str, keys: dict[int, str], out: SampleOutcome) -> None:
        todo = sorted(keys)
        try:
            while todo:
                self.check_budget()
                n = len(todo) if self.use_n else 1
                try:
                    result = await self.client.chat(messages, n=n)
                except TeacherRequestError as exc:
                    out.http_requests += exc.attempts
                    raise
                out.http_requests += result.attempts
                if len(result.texts) < n and self.use_n:
                    log.warning("the teacher server returned %d of n=%d choices: sending one request per sample",
                                len(result.texts), n)
                    self.use_n = False
                got = list(zip(todo, result.texts))
                cost = cost_usd(result.prompt_tokens, result.completion_tokens, self.cfg.price_per_1k_prompt,
                                self.cfg.price_per_1k_completion)
                self.ledger.record(CallRecord(
                    call_id=uuid.uuid4().hex, request_hash=req, model=self.client.model,
                    request_json=_request_json(self.client.model, messages, self.client.params, len(got)),
                    response_json=result.response_json, prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens, latency_s=result.latency_s, cost_usd=cost,
                    attempts=result.attempts,
                    samples=[(i, keys[i], text, result.finish_reasons[j]) for j, (i, text) in enumerate(got)]))
                out.tokens += result.prompt_tokens + result.completion_tokens
                out.cost_usd += cost
                for j, (i, text) in enumerate(got):
                    out.texts[i] = text
                    out.finish_reasons[i] = result.finish_reasons[j]
                todo = todo[len(got):]
        except BudgetExceeded as exc:
            for i in todo:
                out.errors[i] = str(exc)
            self.ledger.release([keys[i] for i in todo])
        except TeacherRequestError as exc:
            for i in todo:
                out.errors[i] = str(exc)
            self.ledger.record_failure(req, todo, str(exc), exc.attempts, [keys[i] for i in todo])
        except BaseException:
            # Cancelled or crashed mid-request: free the claims so that a rerun need not wait for the lease.
            self.ledger.release([keys[i] for i in todo])
            raise


def _request_json(model: str, messages: list[dict], params: dict, n: int) -> str:
    import json

    return json.dumps({"model": model, "messages": messages, "params": params, "n": n}, ensure_ascii=False)
