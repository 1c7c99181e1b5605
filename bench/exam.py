"""Exam throughput: the Ray Data exam (hf engine) against a plain batched transformers loop, and the vllm
engine against the hf engine, on the same arith questions, model and max tokens, in one run.

    .venv/bin/python bench/exam.py                       # 64 questions, 64 new tokens, batch 32
    .venv/bin/python bench/exam.py --questions 16 --max-new-tokens 32 --skip-vllm

Two throughputs per pipeline (generated tokens / seconds):
  end-to-end   model load (and, for the exam, actor start and the Ray Data pipeline) + generation;
  generation   the time inside `generate` only (the exam sums its batches' engine time).
Goals on 2 cores: exam hf / plain loop >= 0.8; vllm / hf >= 2 (steady-state generation: vLLM's ~30 s
start-up would swamp 64 questions end-to-end).

`--order`: what the exam's length-ordered batches save. The hf engine generates the same questions in question
order and in prompt-length order (as run_exam batches them), alternately, and prints the time ratio and how many
outputs agree (batch composition changes float rounding, so a greedy token may rarely differ):

    .venv/bin/python bench/exam.py --order --config configs/protocol/mistakes.yaml --questions 400 \
        --batch-size 50 --max-new-tokens 40 --model runs/study-mistakes/multi-round/seed_0/round_2/model
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def plain_loop(prompts: list[str], model_name: str, dtype: str, batch_size: int, max_new_tokens: int) -> dict:
    """What one process does without Ray: load, then batched left-padded greedy generate with the stop."""
    import torch

    from rbyr_ray.student.models import load_student
    from rbyr_ray.tasks.prompts import STOP

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    model, tok = load_student(model_name, dtype=dtype)
    model.eval()
    gen_s, tokens = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=[STOP],
                                 tokenizer=tok, pad_token_id=tok.pad_token_id)
        gen_s += time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tok.pad_token_id).sum())  # pad = eos: count real tokens only
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall_s": wall, "gen_s": gen_s}


def order_gain(prompts: list[str], model: str, dtype: str, batch_size: int, max_new_tokens: int,
               repeats: int = 2) -> None:
    """Seconds to generate `prompts` in question order against prompt-length order, alternately, same engine."""
    from rbyr_ray.student.engines import SamplingSpec
    from rbyr_ray.student.exam import length_ordered
    from rbyr_ray.student.hf_engine import HFEngine
    from rbyr_ray.student.models import resolve_model_dir
    from rbyr_ray.tasks.prompts import STOP

    engine = HFEngine(resolve_model_dir(model), dtype=dtype, threads=os.cpu_count())
    spec = SamplingSpec(greedy=True, max_new_tokens=max_new_tokens, stop=STOP)
    rows = [{"i": i, "prompt": p} for i, p in enumerate(prompts)]
    orders = {"question order": list(range(len(prompts))),
              "length order": [row["i"] for row in length_ordered(rows)]}  # exactly run_exam's order
    seconds = {name: 0.0 for name in orders}
    texts: dict[str, dict[int, str]] = {}
    for _ in range(repeats):
        for name, order in orders.items():
            ids = engine.tokenizer([prompts[i] for i in order], add_special_tokens=False)["input_ids"]
            start, outs = time.perf_counter(), []
            for b in range(0, len(ids), batch_size):
                outs += engine.generate(ids[b:b + batch_size], spec, [0] * len(ids[b:b + batch_size]))
            seconds[name] += time.perf_counter() - start
            texts[name] = {i: g.text for i, g in zip(order, outs)}
            print(f"{name:<15} {time.perf_counter() - start:6.1f} s", flush=True)
    same = sum(texts["question order"][i] == texts["length order"][i] for i in range(len(prompts)))
    print(f"ratio question order / length order: {seconds['question order'] / seconds['length order']:.2f} "
          f"(over {repeats} runs each); outputs identical for {same}/{len(prompts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")  # bf16 only where the CPU computes it natively
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--order", action="store_true", help="question order against length-ordered batches")
    parser.add_argument("--config", help="take the task's test questions from this experiment config")
    args = parser.parse_args()

    from rbyr_ray.config import ExperimentConfig, load_config
    from rbyr_ray.ray_utils import init_ray
    from rbyr_ray.student.exam import run_exam
    from rbyr_ray.tasks import load_task
    from rbyr_ray.tasks.prompts import student_prefix

    cfg = load_config(args.config) if args.config else ExperimentConfig()
    cfg.student.dtype = args.dtype
    cfg.exam.batch_size = args.batch_size
    records = load_task(cfg.task).test[: args.questions]
    print(f"# {len(records)} arith test questions, model {args.model} ({args.dtype}), greedy, "
          f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, {os.cpu_count()} CPUs", flush=True)

    def line(name: str, tokens: int, wall: float, gen: float) -> None:
        print(f"{name:<22} tokens {tokens:>6}  end-to-end {tokens / wall:7.1f} tok/s ({wall:6.1f} s)  "
              f"generation {tokens / gen:7.1f} tok/s ({gen:6.1f} s)", flush=True)

    if args.order:
        order_gain([student_prefix(r) for r in records], args.model, args.dtype, args.batch_size, args.max_new_tokens)
        return
    plain = plain_loop([student_prefix(r) for r in records], args.model, args.dtype, args.batch_size,
                       args.max_new_tokens)
    line("plain transformers", plain["tokens"], plain["wall_s"], plain["gen_s"])

    init_ray(cfg.ray)  # cluster start-up is a once-per-run cost, outside both measurements
    results = {}
    for engine in ["hf"] + ([] if args.skip_vllm else ["vllm"]):
        cfg.exam.engine = engine
        r = run_exam(records, args.model, cfg, answer_type="numeric", samples=1, greedy=True,
                     max_new_tokens=args.max_new_tokens, out_path=None, seed=0, progress=None)
        results[engine] = r
        line(f"ray data exam ({engine})", r.n_tokens, r.wall_s, r.generate_s / r.replicas)

    hf = results["hf"]
    plain_e2e, plain_gen = plain["tokens"] / plain["wall_s"], plain["tokens"] / plain["gen_s"]
    print(f"ratio exam(hf) / plain loop: end-to-end {hf.tokens_per_s / plain_e2e:.2f}, "
          f"generation {hf.engine_tokens_per_s / plain_gen:.2f}  (goal >= 0.8)")
    if "vllm" in results:
        vl = results["vllm"]
        agree = int((vl.rows["predicted"] == hf.rows["predicted"]).sum())
        print(f"ratio vllm / hf: generation {vl.engine_tokens_per_s / hf.engine_tokens_per_s:.2f}, "
              f"end-to-end {vl.tokens_per_s / hf.tokens_per_s:.2f}  (goal >= 2 for generation); "
              f"answers agree on {agree}/{len(records)}")


if __name__ == "__main__":  # vLLM and Ray workers re-import __main__
    main()
