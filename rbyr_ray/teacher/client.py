"""The async OpenAI-compatible client: bounded concurrency, a requests-per-minute limit, retries with backoff.

    client = TeacherClient.from_config(cfg.teacher, base_url="http://127.0.0.1:8000/v1")
    result = await client.chat(messages, n=2)     # ChatResult(texts=[...], prompt_tokens=..., attempts=1, ...)

Retried: HTTP 429, 5xx, 408/409, timeouts, connection errors and unreadable responses, up to
`max_retries` times, with exponential backoff and full jitter (a server's Retry-After is honoured, capped).
Anything else (400, 401, 404, ...) fails at once: retrying cannot fix it. The API key is read from the
environment variable the config names when the first request is sent; it is never logged or stored. Without a
key (no variable named, or it is not set) requests carry no Authorization header at all, as a keyless
self-hosted server (llama.cpp, `vllm serve` without --api-key) expects; the teacher stage allows that only for a
loopback endpoint (`is_loopback`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import httpx2 as httpx  # the HTTP library this openai release is built on
import openai

from ..config import TeacherConfig

log = logging.getLogger(__name__)

# The openai client insists on a key to be built; without a real one it is never sent (see _NO_AUTH).
DUMMY_KEY = "not-needed"
_NO_AUTH = {"headers": {"Authorization": openai.Omit()}}  # a request with no Authorization header
_RETRY_STATUS = {408, 409, 429}


class TeacherRequestError(RuntimeError):
    """A request that failed for good: a non-retryable status, or retries exhausted. `attempts` were sent."""

    def __init__(self, message: str, attempts: int, retryable: bool):
        super().__init__(message)
        self.attempts = attempts
        self.retryable = retryable


@dataclass
class ChatResult:
    """One HTTP response: its choices' texts (by choice index), usage and timing."""

    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    response_json: str
    usage_estimated: bool = False


@dataclass
class ClientStats:
    http_requests: int = 0  # every POST sent, retries included
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class RateLimiter:
    """Spaces request starts evenly: at most `rpm` per minute from this process.

    >>> RateLimiter(120).interval
    0.5
    """

    def __init__(self, rpm: float):
        self.interval = 60.0 / rpm
        self._next = 0.0
        self._lock: asyncio.Lock | None = None

    async def wait(self) -> None:
        if self._lock is None:  # created inside the running loop (Ray runs UDFs on their own loop)
            self._lock = asyncio.Lock()
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0.5, 1.0] x min(max, base * 2**attempt).

    >>> 0.5 <= backoff_delay(0, 1.0, 30.0) <= 1.0
    True
    >>> backoff_delay(10, 1.0, 4.0) <= 4.0
    True
    """
    rng = rng or random
    return min(max_s, base_s * (2 ** attempt)) * rng.uniform(0.5, 1.0)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """The openai client's HTTP transport over aiohttp: the same requests, a fraction of the CPU.

    httpx's connection pool costs a few ms of CPU per request at 64 in flight, which on a small machine
    caps the client at ~100 requests/s; aiohttp's pool does not. Errors map to httpx's, so the openai
    client raises its usual APITimeoutError / APIConnectionError.
    """

    def __init__(self, limit: int = 256):
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            # auto_decompress off: httpx decodes the body itself from the headers passed through below.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.limit),
                                                  auto_decompress=False)
        t = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.get("connect"), sock_read=t.get("read"))
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in ("host", "content-length")]
        try:
            async with self._session.request(request.method, str(request.url), headers=headers,
                                             data=await request.aread(), timeout=timeout) as resp:
                content = await resp.read()
                raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]
                status = resp.status
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout(f"timed out: {exc}", request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return httpx.Response(status, headers=raw_headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_chat_response(body: str) -> tuple[list[str], list[str | None], tuple[int, int] | None]:
    """(choice texts and finish reasons in choice order, (prompt, completion) tokens or None) of a chat
    completion's JSON body; ValueError when it is not one (a retryable glitch).

    >>> parse_chat_response('{"choices": [{"index": 1, "message": {"content": "b"}, "finish_reason": "stop"},'
    ...                     ' {"index": 0, "message": {"content": "a"}}], "usage": {"prompt_tokens": 5}}')
    (['a', 'b'], [None, 'stop'], (5, 0))
    """
    try:
        data = json.loads(body)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        finish = [c.get("finish_reason") for c in choices]
        usage = data.get("usage") or {}
        tokens = (None if usage.get("prompt_tokens") is None
                  else (int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0)))
    except (AttributeError, TypeError, KeyError) as exc:  # JSON, but not a chat completion
        raise ValueError(f"not a chat completion: {type(exc).__name__}: {exc}") from None
    if not texts:
        raise ValueError("response without choices")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("a choice's content is not text")
    return texts, finish, tokens


def is_loopback(base_url: str) -> bool:
    """True for an endpoint on this machine's loopback (localhost, 127.0.0.0/8, ::1).

    >>> is_loopback("http://127.0.0.1:8000/v1"), is_loopback("http://localhost/v1"), is_loopback("https://api.x.com/v1")
    (True, True, False)
    """
    host = (urlsplit(base_url).hostname or "").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # when a server reports no usage: the usual ~4 characters per token


class TeacherClient:
    """An OpenAI-compatible chat client for many concurrent requests from one event loop."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 16, requests_per_minute: float | None = None, max_retries: int = 6,
                 timeout_s: float = 60.0, backoff_s: float = 0.5, backoff_max_s: float = 20.0,
                 temperature: float = 0.7, max_tokens: int = 256, seed: int | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        self.limiter = RateLimiter(requests_per_minute) if requests_per_minute else None
        self.stats = ClientStats()
        self._rng = random.Random(seed)
        self._sem: asyncio.Semaphore | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._keyless = False

    @classmethod
    def from_config(cls, cfg: TeacherConfig, base_url: str, *, share: int = 1) -> TeacherClient:
        """A client with `1/share` of the configured concurrency and rate (for one of `share` replicas)."""
        rpm = cfg.requests_per_minute / share if cfg.requests_per_minute else None
        return cls(base_url, cfg.model, api_key_env=cfg.api_key_env,
                   concurrency=max(1, -(-cfg.concurrency // share)), requests_per_minute=rpm,
                   max_retries=cfg.max_retries, timeout_s=cfg.timeout_s, backoff_s=cfg.retry_backoff_s,
                   backoff_max_s=cfg.retry_backoff_max_s, temperature=cfg.temperature, max_tokens=cfg.max_tokens)

    def _openai(self) -> openai.AsyncOpenAI:
        if self._client is None:
            # The key is read here, when the first request is about to be sent, and lives only in memory.
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            self._keyless = not key
            http = httpx.AsyncClient(transport=AiohttpTransport(limit=max(64, 2 * self.concurrency)),
                                     timeout=self.timeout_s)
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=key or DUMMY_KEY,
                                              max_retries=0, timeout=self.timeout_s, http_client=http)
        return self._client

    def _missing_key(self, status: int) -> str:
        """What to say first when an endpoint refuses a request sent without a key that the config names: the key
        is read where the request is sent, and on a cluster that is a worker whose environment is its node's (or
        the job's runtime_env), not the driver's shell."""
        if status not in (401, 403) or not self._keyless or not self.api_key_env:
            return ""
        return (f"${self.api_key_env} is not set on {socket.gethostname()}, where this request was sent "
                "(on a cluster, set it on every node or in the job's runtime_env); ")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _note_error(self, kind: str) -> None:
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1

    async def _once(self, messages: list[dict], n: int) -> ChatResult:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        if self.limiter is not None:
            await self.limiter.wait()
        extra = {"n": n} if n > 1 else {}  # some servers reject an explicit n; 1 is the default anyway
        async with self._sem:
            self.stats.http_requests += 1
            start = time.monotonic()
            # The client's generic POST: the same request `chat.completions.create` sends, without its
            # recursive TypedDict transform of the messages, which costs several ms of CPU per request
            # (a third of the client's time at 64 in flight). Plain role/content dicts need no transform.
            # The body comes back as text (non-2xx statuses still raise openai's errors): the ledger keeps
            # the server's answer as sent, and reading three fields needs no ChatCompletion model (~1 ms).
            client = self._openai()
            body = await client.post("/chat/completions", cast_to=str, body={
                "model": self.model, "messages": messages, **self.params, **extra},
                options=_NO_AUTH if self._keyless else {})
            latency = time.monotonic() - start
        texts, finish_reasons, usage = parse_chat_response(body)
        estimated = usage is None
        if usage is not None:
            prompt_tokens, completion_tokens = usage
        else:
            prompt_tokens = _estimate_tokens(json.dumps(messages))
            completion_tokens = sum(_estimate_tokens(t) for t in texts)
        return ChatResult(texts=texts, finish_reasons=finish_reasons, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, latency_s=latency, attempts=1, response_json=body,
                          usage_estimated=estimated)

    async def chat(self, messages: list[dict], n: int = 1) -> ChatResult:
        """One logical request (n choices), retried on transient failures; raises TeacherRequestError."""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                result = await self._once(messages, n)
                result.attempts = attempt + 1
                return result
            except openai.APIStatusError as exc:
                status = exc.status_code
                retryable = status >= 500 or status in _RETRY_STATUS
                kind = f"http {status}"
                if status == 429:
                    retry_after = _retry_after(exc)
                if not retryable:
                    self._note_error(kind)
                    raise TeacherRequestError(f"{kind}: {self._missing_key(status)}{_short(exc)}", attempt + 1,
                                              False) from None
            except openai.APITimeoutError:
                kind = "timeout"
            except openai.APIConnectionError as exc:
                kind = f"connection error ({_short(exc)})"
            except (ValueError, json.JSONDecodeError, openai.APIResponseValidationError) as exc:
                kind = f"bad response ({_short(exc)})"  # unreadable body: a glitch worth one more try
            self._note_error(kind.split(" (")[0])
            if attempt >= self.max_retries:
                raise TeacherRequestError(f"{kind} after {attempt + 1} attempts", attempt + 1, True)
            delay = backoff_delay(attempt, self.backoff_s, self.backoff_max_s, self._rng)
            if retry_after is not None:
                delay = min(max(delay, retry_after), self.backoff_max_s)
            self.stats.retries += 1
            log.debug("teacher request: %s; retry %d/%d in %.2fs", kind, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
            attempt += 1


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text[:limit]
