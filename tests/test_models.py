"""Student loading with the real embedded SmolLM2: the GGUF -> HF cache, concurrent converters, LoRA adapters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rbyr_ray.student.models import (
    adapter_base,
    embedded_gguf,
    is_adapter_dir,
    load_model,
    load_student,
    max_context,
    resolve_model_dir,
)

pytestmark = pytest.mark.slow


def make_adapter(base_dir: str, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter with random (non-zero) B, so that it visibly changes the base model's outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    model.save_pretrained(out)
    return out


def test_embedded_name_resolves_to_a_reusable_bf16_folder():
    path = Path(resolve_model_dir("smollm2-135m"))
    assert (path / "READY").is_file() and (path / "config.json").is_file()
    assert any(path.glob("*.safetensors"))
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    ready = (path / "READY").stat().st_mtime_ns
    folders = sorted(path.parent.iterdir())
    assert Path(resolve_model_dir("smollm2-135m")) == path  # a second call reuses the cache: converts nothing
    assert (path / "READY").stat().st_mtime_ns == ready and sorted(path.parent.iterdir()) == folders
    assert max_context(str(path)) == 8192


def test_two_processes_converting_at_once_leave_one_good_folder(tmp_path):
    # A copy of the GGUF has its own cache key, so this converts for real, twice at the same time.
    gguf = tmp_path / "student.gguf"
    shutil.copy(embedded_gguf("smollm2-135m"), gguf)
    cache = tmp_path / "cache"
    code = ("import sys; from pathlib import Path; from rbyr_ray.student.models import convert_gguf; "
            "print(convert_gguf(Path(sys.argv[1]), sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(gguf), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    folder = Path(paths.pop())
    # The GGUF read once, into the exact float32 weights; the bf16 folder is their cast. No half-written
    # temporary folders.
    exact = folder.name.replace("-bfloat16-", "-float32-")
    entries = sorted(p.name for p in (cache / "models").iterdir())
    assert entries == sorted([folder.name, f"{folder.name}.lock", exact, f"{exact}.lock"])
    exact_weights, weights = load_file(cache / "models" / exact / "model.safetensors"), load_file(folder / "model.safetensors")
    assert weights.keys() == exact_weights.keys()
    assert all(weights[k].dtype == torch.bfloat16 and torch.equal(weights[k], exact_weights[k].to(torch.bfloat16))
               and exact_weights[k].dtype == torch.float32 for k in weights)
    model, tok = load_student(str(gguf), cache_dir=str(cache))
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert next(model.parameters()).dtype == torch.bfloat16


def test_lora_adapter_loads_on_top_of_its_base(tmp_path):
    base_dir = resolve_model_dir("smollm2-135m")
    adapter = make_adapter(base_dir, tmp_path / "adapter")
    assert is_adapter_dir(adapter) and adapter_base(adapter) == base_dir
    assert resolve_model_dir(str(adapter)) == str(adapter)
    tuned, tok = load_student(str(adapter), dtype="float32")
    base = load_model(base_dir, "float32")
    ids = tok(["Question: Mia has 3 apples.\nReasoning: "], return_tensors="pt")
    with torch.inference_mode():
        assert not torch.allclose(tuned(**ids).logits, base(**ids).logits, atol=1e-3)
    assert type(tuned).__name__.startswith("Peft")


def test_unknown_students_fail_with_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="hub downloads are off"):
        resolve_model_dir("someone/unknown-model")
    with pytest.raises(FileNotFoundError, match="no such GGUF"):
        resolve_model_dir(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither config.json"):
        resolve_model_dir(str(tmp_path / "empty"))
