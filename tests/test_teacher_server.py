"""The local teacher server over real loopback HTTP, and the async client's retries against it."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import openai
import pytest

from rbyr_ray.config import TaskConfig, TeacherConfig
from rbyr_ray.tasks import load_task
from rbyr_ray.tasks.grading import extract_answer, grade
from rbyr_ray.tasks.prompts import strip_answer_line, teacher_cot_messages, teacher_feedback_messages
from rbyr_ray.teacher.cached import CachedTeacher
from rbyr_ray.teacher.client import TeacherClient, TeacherRequestError, parse_chat_response
from rbyr_ray.teacher.ledger import Ledger
from rbyr_ray.teacher.server import LocalTeacherServer

TASK = TaskConfig(arith={"n_train": 40, "n_test": 10})
RECORDS = load_task(TASK).train


@pytest.fixture(scope="module")
def solver():
    with LocalTeacherServer("solver", TASK, TeacherConfig(), seed=0) as url:
        yield url


def _client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def test_models_and_completions_with_n_and_usage(solver):
    client = _client(solver)
    assert [m.id for m in client.models.list().data] == ["rbyr-local-teacher"]
    record = RECORDS[0]
    resp = client.chat.completions.create(model="rbyr-local-teacher", n=4,
                                          messages=teacher_cot_messages(record, "numeric"))
    texts = [c.message.content for c in resp.choices]
    assert len(texts) == 4 and len(set(texts)) == 4  # wording varies across the n samples
    assert all(grade("numeric", t, record.answer) for t in texts)
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0


def test_solver_rationales_are_exact_and_compact(solver):
    client = _client(solver)
    for record in RECORDS[:15]:
        resp = client.chat.completions.create(model="m", n=6, messages=teacher_cot_messages(record, "numeric"))
        for choice in resp.choices:
            text = choice.message.content
            assert grade("numeric", text, record.answer), text
            steps = int(record.tags["steps"])
            assert text.count("=") == steps and len(strip_answer_line(text)) <= 40 * steps, text
            assert "\n" not in strip_answer_line(text)
    # The feedback prompt carries the question too.
    record = RECORDS[0]
    resp = client.chat.completions.create(model="m", messages=teacher_feedback_messages(record, "1 + 1 = 3."))
    assert grade("numeric", resp.choices[0].message.content, record.answer)


def test_wrong_and_garbage_answers():
    with LocalTeacherServer("solver", TASK, TeacherConfig(wrong_rate=1.0), seed=1) as url:
        client = _client(url)
        for record in RECORDS[:15]:
            resp = client.chat.completions.create(model="m", n=3, messages=teacher_cot_messages(record, "numeric"))
            for choice in resp.choices:
                text = choice.message.content
                assert "Answer:" in text and "=" in text  # fluent: steps and an answer line
                assert extract_answer("numeric", text) is not None and not grade("numeric", text, record.answer)
    with LocalTeacherServer("solver", TASK, TeacherConfig(garbage_rate=1.0), seed=2) as url:
        resp = _client(url).chat.completions.create(model="m", n=5, messages=teacher_cot_messages(RECORDS[0]))
        assert all(extract_answer("numeric", c.message.content) is None for c in resp.choices)


def test_false_step_answers_are_right_after_exactly_one_false_step():
    """--false-step-rate: a fluent rationale, the right final answer, and one false intermediate step."""
    from rbyr_ray.tasks import check_steps

    server = LocalTeacherServer("solver", TASK, TeacherConfig(false_step_rate=1.0), seed=3)
    with server as url:
        client = _client(url)
        for record in RECORDS[:15]:
            resp = client.chat.completions.create(model="m", n=3, messages=teacher_cot_messages(record, "numeric"))
            for choice in resp.choices:
                text = choice.message.content
                steps = check_steps(strip_answer_line(text))
                assert grade("numeric", text, record.answer), text
                assert steps.checked == max(1, int(record.tags["steps"])) and len(steps.false_steps) == 1, text
        assert server.stats()["false_steps"] == 45 == server.stats()["choices"]


def test_api_key_is_required_when_set():
    with LocalTeacherServer("solver", TASK, TeacherConfig(), api_key="s3cret") as url:
        with pytest.raises(openai.AuthenticationError):
            _client(url, api_key="wrong").models.list()
        assert _client(url, api_key="s3cret").models.list().data
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/models")
        assert err.value.code == 401


def test_reference_backend_answers_from_worked_solutions():
    with LocalTeacherServer("reference", TASK, TeacherConfig()) as url:
        client = _client(url)
        for record in RECORDS[:5]:
            resp = client.chat.completions.create(model="m", n=2, messages=teacher_cot_messages(record, "numeric"))
            for choice in resp.choices:
                assert record.solution in choice.message.content and grade("numeric", choice.message.content,
                                                                           record.answer)


def test_client_retries_429_and_500_then_gives_up_cleanly():
    faults = TeacherConfig(error_rate=0.3, rate_limit_rate=0.3)
    with LocalTeacherServer("solver", TASK, faults, seed=3) as url:
        client = TeacherClient(url, "m", api_key_env=None, concurrency=8, max_retries=12, backoff_s=0.001,
                               backoff_max_s=0.01)

        async def many():
            try:
                return await asyncio.gather(*(client.chat(teacher_cot_messages(r, "numeric"), n=2)
                                              for r in RECORDS[:20]))
            finally:
                await client.aclose()

        results = asyncio.run(many())
        assert all(len(r.texts) == 2 for r in results)
        assert client.stats.retries > 0 and client.stats.http_requests == 20 + client.stats.retries
        assert set(client.stats.errors) <= {"http 500", "http 429"}
    with LocalTeacherServer("solver", TASK, TeacherConfig(error_rate=1.0)) as url:
        client = TeacherClient(url, "m", api_key_env=None, max_retries=2, backoff_s=0.001, backoff_max_s=0.01)
        with pytest.raises(TeacherRequestError, match="http 500 after 3 attempts"):
            asyncio.run(client.chat(teacher_cot_messages(RECORDS[0]), n=1))


def test_server_that_ignores_n_gets_one_request_per_sample(tmp_path):
    with LocalTeacherServer("solver", TASK, TeacherConfig(), extra_args=["--ignore-n"]) as url:
        cfg = TeacherConfig(samples=3)
        client = TeacherClient.from_config(cfg, url)
        teacher = CachedTeacher(client, Ledger(tmp_path / "l.sqlite"), cfg)
        messages = teacher_cot_messages(RECORDS[0], "numeric")
        out = asyncio.run(teacher.samples(messages, [0, 1, 2]))
        assert sorted(out.texts) == [0, 1, 2] and not out.errors
        assert teacher.use_n is False and out.http_requests == 3  # n=3 answered once, then one per sample
        again = asyncio.run(CachedTeacher(TeacherClient.from_config(cfg, url), Ledger(tmp_path / "l.sqlite"),
                                          cfg).samples(messages, [0, 1, 2]))
        assert again.cached == {0, 1, 2} and again.http_requests == 0
        stats = json.loads(urllib.request.urlopen(url[: -len("/v1")] + "/stats").read())
        assert stats["completions"] == 3


def test_chat_bodies_are_read_by_choice_index_and_malformed_ones_are_errors():
    body = json.dumps({"choices": [{"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
                                   {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    assert parse_chat_response(body) == (["a", "b"], ["stop", "length"], (7, 3))
    no_usage = json.dumps({"choices": [{"index": 0, "message": {"content": None}}]})
    assert parse_chat_response(no_usage) == ([""], [None], None)  # the client then estimates the tokens
    # Each is retried by the client as a bad response (ValueError), never stored as a rationale.
    for bad in ["not json", "[]", '{"choices": []}', '{"choices": [{"message": {"content": 5}}]}',
                '{"choices": [{"index": 0, "message": "x"}]}']:
        with pytest.raises(ValueError):
            parse_chat_response(bad)
