"""One prepared GPU check: matmul peak, the training step with the reflection loss, transformers exam generation.

    bash bench/gpu_check.sh            # on a machine with an NVIDIA GPU (torch, transformers, peft; no Ray/vLLM)
    bash bench/gpu_check.sh --smoke    # tiny shapes, runs on a CPU in well under a minute

Needs only torch, transformers and peft, and nothing from the network: the models are random-init LlamaConfig
models built here with the shapes of SmolLM2-135M and SmolLM2-1.7B (vocab 49152, tied embeddings). The
objective is the project's own ReflectionObjective (rbyr_ray/train/objective.py + losses.py), loaded straight
from its files so that rbyr_ray/__init__.py (pydantic, yaml) is not imported.

What is measured (all on one device, in one process):
1. matmul peak: a bf16 GEMM (8192^3 on a GPU), warmed up, median of CUDA-event-timed runs -> TFLOP/s.
2. training step: objective(batch) -> backward -> clip_grad_norm_(1.0) -> AdamW.step -> zero_grad, with the
   project's defaults: weights in bf16 (student.dtype) and torch.autocast(bf16) (train.bf16); LoRA r=16,
   alpha=32, dropout 0.05 on q/k/v/o/gate/up/down (train.lora). Anchor + positive + negative are B x T tokens
   each, no padding. tok/s counts ANCHOR tokens only (the L_lm training tokens); pos/neg are extra work.
   MFU = model FLOPs per second / the peak of step 1, with model FLOPs per step
     full FT: 6*N*T_anchor + 6*(N - V*h)*T_pn        LoRA: 4*N*T_anchor + 4*(N - V*h)*T_pn
   (N = all parameters, tied LM head counted once; pos/neg passes run the decoder without the LM head;
   LoRA skips weight gradients of the frozen base, so 2N forward + 2N input-gradient; adapter and attention
   score FLOPs are left out). "MFU anchor-only" uses only the first term, i.e. the textbook 6*N*tok/s.
   The kinds on sequence likelihoods (hinge, redi, dpop; issue 21) run the anchor and one negative, both through
   the LM head: 6*N*(T_anchor + T_neg) (LoRA 4N). dpop's pi_ref pass runs once before the timed steps (once
   per round in training), so it is not in the step.
3. exam generation: model.generate, greedy, left padding, prompts of 96..160 tokens, exactly max_new_tokens
   new tokens per row (min_new_tokens = max_new_tokens, so random weights cannot stop early) -> new tokens/s.

Results: a markdown table on stdout, and gpu_check.md / gpu_check.json / gpu_check.log in --out
(default: $OUT if set, else runs/gpu_check).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LOG: list[str] = []


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def load_objective():
    """rbyr_ray.train.objective without running rbyr_ray/__init__.py (which imports pydantic and yaml)."""
    pkg_name = "_rbyr_train_only"
    train_dir = ROOT / "rbyr_ray" / "train"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = [str(train_dir)]
    sys.modules[pkg_name] = pkg
    mods = {}
    for name in ("losses", "objective"):  # losses first: objective does `from .losses import ...`
        spec = importlib.util.spec_from_file_location(f"{pkg_name}.{name}", train_dir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods["objective"].ReflectionObjective


# ---------------------------------------------------------------------------------------------- shapes
SHAPES = {
    # SmolLM2-135M: hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate 1536, vocab 49152, tied.
    "smollm2-135m": {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                         "intermediate_size": 1536, "vocab_size": 49152},
    # SmolLM2-1.7B: hidden 2048, 24 layers, 32 heads, 32 kv heads, intermediate 8192, vocab 49152, tied.
    "smollm2-1.7b": {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32,
                         "intermediate_size": 8192, "vocab_size": 49152},
    # --smoke: tiny, for a CPU.
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 128, "vocab_size": 512},
}


def build_model(shape: str, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048, tie_word_embeddings=True,
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    model = model.to(dtype)
    model.generation_config.pad_token_id = 0
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embedding counted once


# ---------------------------------------------------------------------------------------------- timing
class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn) -> float:
        """Seconds for fn(), synchronized (CUDA events on a GPU)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def matmul_peak(device, n: int, dtype, warmup: int, iters: int, timer: Timer) -> float:
    g = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)  # random data, never zeros
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    c = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b, out=c)
    times = [timer.time(lambda: torch.matmul(a, b, out=c)) for _ in range(iters)]
    # sanity: one row against a float32 reference
    ref = a[:1].float() @ b.float()
    err = ((c[:1].float() - ref).norm() / ref.norm()).item()
    if not err < 2e-2:
        raise RuntimeError(f"matmul check failed: rel err {err:.2e}")
    return 2 * n**3 / statistics.median(times) / 1e12


# ---------------------------------------------------------------------------------------------- training
def make_batch(batch: int, seq: int, vocab: int, device, prefix: int, seed: int, kind: str = "triplet"):
    g = torch.Generator().manual_seed(seed)

    def ids():
        return torch.randint(3, vocab, (batch, seq), generator=g)

    input_ids = ids()
    input_ids[:, -1] = 2  # eos last, as the student sequence format has it
    labels = input_ids.clone()
    weights = torch.ones(batch, seq)
    weights[:, :prefix] = 0.1  # w_prefix on the prefix tokens
    ones = torch.ones(batch, seq, dtype=torch.long)
    pos, neg = ids(), ids()
    pos[:, :prefix] = input_ids[:, :prefix]  # same prefix(q), another rationale
    neg[:, :prefix] = input_ids[:, :prefix]
    out = {"input_ids": input_ids, "attention_mask": ones, "labels": labels, "weights": weights,
               "valid": torch.ones(batch, dtype=torch.bool),
               "pos_input_ids": pos, "pos_attention_mask": ones.clone(), "neg_input_ids": neg,
               "neg_attention_mask": ones.clone()}
    if kind != "triplet":  # the pair kinds score the target (rationale, answer, eos) of anchor and negative
        target = torch.zeros(batch, seq, dtype=torch.long)
        target[:, prefix:] = 1
        out |= {"target_mask": target, "neg_target_mask": target.clone()}
    return {k: v.to(device) for k, v in out.items()}


def train_case(Objective, model_shape, mode, lam, batch, seq, steps, warmup, device, dtype, timer, peak_tflops,
               kind: str = "triplet"):
    from torch import nn

    model = build_model(model_shape, device, dtype)
    N = n_params(model)
    V, h = model.config.vocab_size, model.config.hidden_size
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)  # train.lr default
    # hinge: δ 0.1 nats/token, so the hinge acts (random weights put ℓ̄(t) and ℓ̄(m) together).
    objective = Objective(model, weight=lam, margin=0.1 if kind == "hinge" else 1.0, pooling="last", kind=kind)
    b = make_batch(batch, seq, V, device, prefix=seq // 4, seed=0, kind=kind)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if kind in ("ranking", "dpop"):  # pi_ref = the starting weights, once (as trainer.reference_logps does)
        with autocast:
            b["ref_chosen_logp"], b["ref_rejected_logp"] = objective.reference_logps(b)
        objective.train()
    losses = []

    def step():
        with autocast:
            out = objective(b)
        out["loss"].backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append({k: v.detach() for k, v in out.items()})  # read after the timed steps: no sync here

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    times = [timer.time(step) for _ in range(steps)]
    first, last = losses[0], losses[-1]
    lm0, lm1 = float(first["lm_loss"]), float(last["lm_loss"])
    ref0, ref1 = float(first["ref_loss"]), float(last["ref_loss"])
    if not all(math.isfinite(float(o["loss"])) for o in losses):
        raise RuntimeError("non-finite loss")
    # Only the first step can be checked: the same batch is repeated, so the hinge may reach 0 later (the
    # backward through the pos/neg pass still runs then, on zero gradients, so the timing is unaffected).
    if lam > 0 and not (ref0 < 0 if kind == "redi" else ref0 > 0):  # redi's L is ℓ̄(m) < 0
        raise RuntimeError(f"reflection loss is {ref0} at the first step with lambda={lam}: no pos/neg pass?")
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    dt = statistics.median(times)
    t_anchor = batch * seq
    pair = kind != "triplet"  # one negative, through the LM head
    t_pn = (1 if pair else 2) * batch * seq if lam > 0 else 0
    k = 6 if mode == "full" else 4
    flops_anchor = k * N * t_anchor
    flops = flops_anchor + k * (N if pair else N - V * h) * t_pn
    row = {"model": model_shape, "mode": mode, "lam": lam, "kind": kind, "batch": batch, "seq": seq, "params": N,
           "trainable": trainable,
               "step_ms": dt * 1e3, "step_ms_min": min(times) * 1e3, "anchor_tok_s": t_anchor / dt,
               "all_tok_s": (t_anchor + t_pn) / dt, "model_tflops": flops / dt / 1e12,
               "mfu": flops / dt / 1e12 / peak_tflops, "mfu_anchor": flops_anchor / dt / 1e12 / peak_tflops,
               "peak_mem_gib": mem, "lm_loss_first": lm0, "lm_loss_last": lm1, "ref_loss_first": ref0,
               "ref_loss_last": ref1}
    return row


# The training cases per model: the triplet (the paper's) at λ 0.5 and λ = 0, full and LoRA; then the kinds on
# sequence likelihoods (issue 21) at λ 0.5, full fine-tuning, beside the triplet's full λ 0.5 row.
CASES = [("full", 0.5, "triplet"), ("full", 0.0, "triplet"), ("lora", 0.5, "triplet"), ("lora", 0.0, "triplet"),
         ("full", 0.5, "hinge"), ("full", 0.5, "redi"), ("full", 0.5, "dpop")]


# ---------------------------------------------------------------------------------------------- generation
def gen_case(model, batch, prompt_min, prompt_max, new_tokens, device, timer):
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(batch)
    lens = torch.randint(prompt_min, prompt_max + 1, (batch,), generator=g)
    lens[0] = prompt_max
    L = int(lens.max())
    ids = torch.zeros(batch, L, dtype=torch.long)
    mask = torch.zeros(batch, L, dtype=torch.long)
    for i, n in enumerate(lens.tolist()):  # left padding
        ids[i, L - n:] = torch.randint(3, V, (n,), generator=g)
        mask[i, L - n:] = 1
    ids, mask = ids.to(device), mask.to(device)
    result = {}

    def run(n):
        with torch.inference_mode():
            result["out"] = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                           max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                                           eos_token_id=2)

    run(min(8, new_tokens))  # warm-up at this batch size
    dt = timer.time(lambda: run(new_tokens))
    generated = result["out"].shape[1] - L
    if generated != new_tokens:
        raise RuntimeError(f"generated {generated} tokens, expected {new_tokens}")
    return {"batch": batch, "prompt_len": f"{prompt_min}-{prompt_max}", "new_tokens": new_tokens, "seconds": dt,
                "new_tok_s": batch * generated / dt, "ms_per_token_step": dt / generated * 1e3}


# ---------------------------------------------------------------------------------------------- main
def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "pydantic", "yaml", "ray", "vllm"):
        try:
            v[name] = getattr(__import__(name), "__version__", "?")
        except Exception:  # noqa: BLE001 - any import failure means "not usable here"
            v[name] = "missing"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        v.update(device=p.name, sms=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1),
                 cuda=torch.version.cuda)
    else:
        v["device"] = "cpu"
    return v


def fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and counts (CPU is fine)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"))
    ap.add_argument("--models", default=None, help="comma list of " + ",".join(SHAPES))
    ap.add_argument("--batch", type=int, default=None, help="anchor batch (pos and neg: the same)")
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps")
    ap.add_argument("--gen-batches", default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=None, help="skip what would start after this many seconds")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    smoke = a.smoke
    models = (a.models or ("tiny" if smoke else "smollm2-135m,smollm2-1.7b")).split(",")
    batch = a.batch or (2 if smoke else 16)
    seq = a.seq or (32 if smoke else 256)
    steps = a.steps or (2 if smoke else 20)
    warmup = a.warmup or (1 if smoke else 3)
    gen_batches = [int(x) for x in (a.gen_batches or ("1,4" if smoke else "1,32,128")).split(",")]
    new_tokens = a.new_tokens or (8 if smoke else 128)
    prompt_min, prompt_max = (8, 16) if smoke else (96, 160)
    budget = a.budget_s or (120 if smoke else 330)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not smoke:
        say("no CUDA device: running with --smoke shapes")
        return main(["--smoke", "--out", str(out_dir)])
    warnings.filterwarnings("ignore", category=FutureWarning)
    timer = Timer(device)
    v = versions()
    say("versions:", json.dumps(v))
    Objective = load_objective()
    say(f"objective loaded from {ROOT / 'rbyr_ray/train/objective.py'} (rbyr_ray/__init__.py not imported)")

    results = {"versions": v, "argv": sys.argv[1:], "smoke": smoke, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "train": [], "gen": [], "skipped": [], "errors": []}

    def save():
        (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1))
        (out_dir / "gpu_check.log").write_text("\n".join(LOG) + "\n")

    def over_budget(what) -> bool:
        el = time.perf_counter() - t_start
        if el > budget:
            results["skipped"].append(what)
            say(f"SKIP {what}: {el:.0f}s elapsed > budget {budget:.0f}s")
            return True
        return False

    # 1. matmul peak
    n = 256 if smoke else 8192
    mm_dtype = torch.bfloat16
    peak = matmul_peak(device, n, mm_dtype, warmup=2 if smoke else 5, iters=3 if smoke else 20, timer=timer)
    results["matmul"] = {"n": n, "dtype": str(mm_dtype), "tflops": peak}
    say(f"matmul peak: bf16 {n}^3 -> {peak:.1f} TFLOP/s (median)")
    save()

    # 2. training step, then 3. exam generation, model by model (so a budget stop loses the least)
    for m in models:
        for mode, lam, kind in CASES:
            name = f"train {m} {mode} lambda={lam}" + (f" {kind}" if kind != "triplet" else "")
            if over_budget(name):
                continue
            b = batch
            while b >= 1:
                try:
                    t0 = time.perf_counter()
                    row = train_case(Objective, m, mode, lam, b, seq, steps, warmup, device, torch.bfloat16,
                                     timer, peak, kind)
                    row["wall_s"] = time.perf_counter() - t0
                    results["train"].append(row)
                    say(f"{name}: batch {b}x{seq} step {row['step_ms']:.1f} ms (min {row['step_ms_min']:.1f}), "
                        f"{row['anchor_tok_s']:.0f} anchor tok/s, MFU {row['mfu']:.1%} (anchor-only "
                        f"{row['mfu_anchor']:.1%}), peak mem {row['peak_mem_gib']:.1f} GiB, trainable "
                        f"{row['trainable']:,}/{row['params']:,}, lm {row['lm_loss_first']:.3f}->"
                        f"{row['lm_loss_last']:.3f}, ref {row['ref_loss_first']:.3f}->{row['ref_loss_last']:.3f} "
                        f"[{row['wall_s']:.0f}s]")
                    break
                except torch.cuda.OutOfMemoryError:
                    say(f"{name}: OOM at batch {b}; retrying at {b // 2}")
                    results["errors"].append(f"{name}: OOM at batch {b}")
                    b //= 2
                except Exception as e:  # noqa: BLE001 - record and go on with the next case
                    say(f"{name}: ERROR {type(e).__name__}: {e}")
                    results["errors"].append(f"{name}: {type(e).__name__}: {e}")
                    break
                finally:
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            save()

        if over_budget(f"generate {m}"):
            continue
        try:
            model = build_model(m, device, torch.bfloat16).eval()
        except Exception as e:  # noqa: BLE001
            results["errors"].append(f"generate {m}: build: {e}")
            continue
        for gb in gen_batches:
            if over_budget(f"generate {m} batch {gb}"):
                continue
            try:
                row = gen_case(model, gb, prompt_min, prompt_max, new_tokens, device, timer)
                row["model"] = m
                results["gen"].append(row)
                say(f"generate {m} batch {gb}: {row['new_tok_s']:.0f} new tok/s "
                    f"({row['ms_per_token_step']:.1f} ms per decode step, {row['seconds']:.2f}s)")
            except Exception as e:  # noqa: BLE001
                say(f"generate {m} batch {gb}: ERROR {type(e).__name__}: {e}")
                results["errors"].append(f"generate {m} batch {gb}: {type(e).__name__}: {e}")
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()

    # table
    md = [f"device: {v.get('device')} | torch {v['torch']} | transformers {v['transformers']} | peft {v['peft']}"
          f" | date {results['date']}" + (" | SMOKE (tiny shapes)" if smoke else ""),
          "",
          (f"matmul peak (bf16 GEMM {n}^3, random data, median of {'CUDA-event' if timer.cuda else 'wall-clock'} "
          f"timings): **{peak:.1f} TFLOP/s**"),
          "",
          ("Training step (bf16 weights + autocast bf16, AdamW, clip 1.0; anchor/pos/neg each B x T, no padding; "
          "tok/s = anchor tokens; MFU: full 6N, LoRA 4N FLOPs per token, the triplet's pos/neg without LM head, "
          "hinge/redi/dpop's negative with it):"),
          "",
          "| model | mode | λ | kind | B x T | step ms | anchor tok/s | MFU | MFU anchor-only | peak GiB |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["train"]:
        md.append(f"| {r['model']} | {r['mode']} | {r['lam']} | {r.get('kind', 'triplet')} | {r['batch']}x{r['seq']} | "
                  f"{r['step_ms']:.1f} | "
                  f"{r['anchor_tok_s']:,.0f} | {r['mfu']:.1%} | {r['mfu_anchor']:.1%} | "
                  f"{fmt(r['peak_mem_gib'], '.1f')} |")
    md += ["", (f"Exam generation (transformers generate, greedy, left padding, prompts {prompt_min}-{prompt_max} "
               f"tokens, {new_tokens} new tokens per row, bf16, SDPA):"), "",
           "| model | batch | seconds | new tok/s | ms per decode step |", "|---|---|---|---|---|"]
    for r in results["gen"]:
        md.append(f"| {r['model']} | {r['batch']} | {r['seconds']:.2f} | {r['new_tok_s']:,.0f} | "
                  f"{r['ms_per_token_step']:.1f} |")
    if results["skipped"] or results["errors"]:
        md += ["", "skipped: " + "; ".join(results["skipped"]), "errors: " + "; ".join(results["errors"])]
    md.append(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    table = "\n".join(md)
    say("\n" + table)
    results["table"] = table
    (out_dir / "gpu_check.md").write_text(table + "\n")
    save()
    return 1 if results["errors"] and not results["train"] else 0


if __name__ == "__main__":
    sys.exit(main())
