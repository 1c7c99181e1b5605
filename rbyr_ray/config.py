"""One schema for an experiment: YAML in, `key=value` overrides on top, validated here and nowhere else.

Defaults are METHOD.md's. Secrets are never part of a config: the teacher names the *environment
variable* that holds its API key (`teacher.api_key_env`).

    cfg = load_config("configs/demo.yaml", ["train.reflection.weight=0.3", "rounds=4"])
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the key and what was expected."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Placement = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]  # Ray placement group strategies
# Where torch runs: "auto" follows the GPU request; "cpu" with GPUs requested reserves logical GPUs (declared to
# Ray on a CPU machine) while computing on the CPU, which is how GPU placement is tested without a GPU.
Device = Literal["auto", "cpu", "cuda"]


class ArithConfig(_Section):
    """The synthetic multi-step arithmetic task (rbyr_ray.tasks.arith)."""

    n_train: int = Field(300, ge=1)
    n_test: int = Field(200, ge=1)
    min_steps: int = Field(1, ge=1, le=4)
    max_steps: int = Field(3, ge=1, le=4)
    min_number: int = Field(2, ge=1)
    max_number: int = Field(50, ge=2)
    max_factor: int = Field(9, ge=2)
    ops: list[Literal["+", "-", "*", "/"]] = ["+", "-", "*", "/"]
    seed: int = 1234
    # Optional override of the sentence templates per operation: {"+": ["{Name} buys {n} more {obj}."], ...}
    templates: dict[str, list[str]] | None = None

    @model_validator(mode="after")
    def _steps_ordered(self) -> ArithConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) > max_steps ({self.max_steps})")
        if self.min_number > self.max_number:
            raise ValueError(f"min_number ({self.min_number}) > max_number ({self.max_number})")
        return self


# The built-in tasks: the task files shipped in tasks/builtin/ (read here by name only: tasks imports config).
BUILTIN_TASKS = tuple(sorted(p.stem for p in (Path(__file__).resolve().parent / "tasks" / "builtin").glob("*.yaml")))


class TaskConfig(_Section):
    # A built-in task by name, or a task file (docs/tasks.md); exactly one of them (name defaults to arith).
    name: Literal[BUILTIN_TASKS] | None = None  # type: ignore[valid-type]
    file: str | None = None  # a task file (YAML); a relative path is made absolute against the working folder
    # Keys of the task file (a built-in's too) overridden like config keys, same nesting:
    # task.spec.generation.max_new_tokens=64 (docs/tasks.md).
    spec: dict[str, Any] = {}
    allow_hub_download: bool = False  # a task file's `data.hub` source is read only when this is true
    # Where the benchmark files live; None = $RBYR_DATA_DIR, else ../shared/data next to the checkout.
    data_dir: str | None = None
    train_limit: int | None = Field(None, ge=1, description="use only the first N training questions")
    test_limit: int | None = Field(None, ge=1, description="use only the first N test questions")
    # Fraction of the training questions held out as a validation split (model selection in Tune).
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    few_shot: int = Field(0, ge=0, description="demonstrations in the student prefix")
    arith: ArithConfig = ArithConfig()

    @model_validator(mode="before")
    @classmethod
    def _name_or_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        file, name = data.get("file"), data.get("name")
        if file is not None and name is not None:
            raise ValueError("give task.name (a built-in task) or task.file (a task file), not both; over a "
                             "config that names a task: task.name=null task.file=FILE")
        if file is None:
            data["name"] = name or "arith"
        elif isinstance(file, str) and "://" not in file:
            # Absolute, so that a run resumed from another folder (or the teacher server) reads the same file.
            data["file"] = str(Path(file).expanduser().absolute())
        return data


class StudentConfig(_Section):
    # A hub id, a local HF folder, a .gguf file, or the embedded name "smollm2-135m".
    model: str = "smollm2-135m"
    # auto: bfloat16 where the hardware computes it natively (GPUs, AVX-512-BF16/AMX CPUs), else float32.
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    cache_dir: str | None = None  # converted-GGUF cache; None = ~/.cache/rbyr_ray
    max_seq_len: int = Field(512, ge=16)
    allow_hub_download: bool = False  # only a cluster with a hub enables this


class TeacherConfig(_Section):
    # openai: any OpenAI-compatible endpoint; local: the project's own server, started by the run;
    # student: the student rationalizes its own mistakes (STaR-style baseline).
    backend: Literal["openai", "local", "student"] = "local"
    local_backend: Literal["solver", "reference"] = "solver"
    base_url: str | None = None
    model: str = "rbyr-local-teacher"
    api_key_env: str | None = "OPENAI_API_KEY"
    samples: int = Field(2, ge=1, description="k rationales per question (k >= 2 gives a reflection positive)")
    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(256, ge=1)
    concurrency: int = Field(16, ge=1, description="requests in flight")
    requests_per_minute: float | None = Field(None, gt=0)
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    retry_backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles per retry, with jitter")
    retry_backoff_max_s: float = Field(20.0, ge=0)
    use_n: bool = True  # ask for k samples with `n`; falls back to separate requests when a server ignores it
    use_hint: bool = True  # the feedback prompt includes the gold answer as a hint
    few_shot: bool = True
    reask: int = Field(0, ge=0, description="re-ask questions with no accepted rationale up to m times")
    # The quality gate. answer: the final answer equals the gold one. steps: that, and no arithmetic step
    # `<expression> = <number>` of the rationale is false (tasks.check_steps). auto: steps for numeric tasks,
    # answer for csqa/strategyqa, where there is nothing to compute (there `steps` acts as `answer` too).
    gate: Literal["auto", "answer", "steps"] = "auto"
    price_per_1k_prompt: float = Field(0.0, ge=0)
    price_per_1k_completion: float = Field(0.0, ge=0)
    budget_tokens: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, gt=0)
    ledger: str | None = None  # None = <run_dir>/teacher_ledger.sqlite
    replicas: int = Field(1, ge=1, description="Ray Data actors sending requests")
    # Fault injection for the local server (tests and demos of robustness).
    latency_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    wrong_rate: float = Field(0.0, ge=0, le=1)
    garbage_rate: float = Field(0.0, ge=0, le=1)
    # A fluent rationale with the right final answer and one false intermediate step (what the steps gate catches).
    false_step_rate: float = Field(0.0, ge=0, le=1)

    @field_validator("api_key_env")
    @classmethod
    def _env_name_only(cls, value: str | None) -> str | None:
        # A pasted key ("sk-...") would end up in run folders and logs; only a variable's name is accepted.
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the name of an environment variable holding the key, not the key itself")
        return value


class ExamConfig(_Section):
    engine: Literal["hf", "vllm"] = "hf"

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        # Run dirs and configs written before Ray 2.60's deprecations still load: Ray Data now places the replicas.
        if isinstance(data, dict) and "placement_strategy" in data:
            data = {k: v for k, v in data.items() if k != "placement_strategy"}
            logging.getLogger(__name__).warning(
                "exam.placement_strategy is no longer used and is ignored: Ray Data spreads the exam's replicas "
                "over the nodes (docs/scale_out.md)")
        return data

    samples: int = Field(4, ge=1)
    # What is a mistake. answer (the paper's): a wrong final answer. steps: also a right answer reached by a
    # false arithmetic step (numeric tasks); it goes to the teacher with the feedback prompt like any mistake.
    mistakes: Literal["answer", "steps"] = "answer"
    temperature: float = Field(1.0, ge=0.0)
    top_k: int = Field(50, ge=0)
    max_new_tokens: int | None = Field(None, ge=1, description="None = the task's default (METHOD.md)")
    round0: bool = True  # exam + evaluation of the untuned student
    limit: int | None = Field(None, ge=1, description="examine only the first N training questions")
    batch_size: int = Field(32, ge=1)
    replicas: int = Field(1, ge=1)
    cpus_per_replica: float = Field(1.0, ge=0)
    gpus_per_replica: float = Field(0.0, ge=0)
    device: Device = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int = Field(2048, ge=64)


class EvalConfig(_Section):
    split: Literal["test", "val"] = "test"
    max_new_tokens: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)


class ReflectionConfig(_Section):
    weight: float = Field(0.5, ge=0.0, description="lambda in L = L_lm + lambda * L_ref")
    # triplet: the paper's L_ref on hidden states; ranking: DPO's loss, teacher rationale over the student's mistake;
    # hinge, redi, dpop: on sequence likelihoods (METHOD.md "Learning from mistakes on sequence likelihoods").
    kind: Literal["triplet", "ranking", "hinge", "redi", "dpop"] = "triplet"
    margin: float = Field(1.0, gt=0.0, description="triplet: the hinge's margin on cosine similarities; "
                                                   "hinge: δ in nats per token")
    pooling: Literal["last", "mean"] = "last"
    beta: float = Field(0.1, gt=0.0, description="ranking, dpop: DPO's beta on the log-likelihood ratios")
    penalty: float = Field(50.0, ge=0.0, description="dpop: λ_p on max(0, log pi_ref(t) - log pi(t)) (the paper's 50)")
    # The rounds in which the loss acts: from start_round on (the paper's: from round 1), at `lr` (None: train.lr).
    # Earlier rounds are SFT rounds: L_lm alone at train.lr. The literature runs a negative term after SFT, at a
    # preference-scale rate; with weight 0 the same keys give λ = 0 the same round-2 learning rate.
    start_round: int = Field(1, ge=1, description="first round in which L_ref acts and `lr` applies")
    lr: float | None = Field(None, gt=0, description="learning rate of the rounds from start_round on; None = train.lr")
    max_positives: int = Field(10, ge=1)
    max_negatives: int = Field(4, ge=1)
    max_rationale_tokens: int = Field(192, ge=8)


class LoraConfig(_Section):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(_Section):
    lr: float = Field(5e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    # Batches of similar lengths (HF Trainer's group_by_length): on CPU, padding is paid in full. Items of one
    # question never share a batch, so an epoch may get a partial batch more than with random batches.
    group_by_length: bool = True
    warmup_steps: int = Field(5, ge=0)
    schedule: Literal["constant", "linear"] = "constant"  # after warmup
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    w_prefix: float = Field(0.1, ge=0.0, description="L_lm weight of prefix tokens")
    reflection: ReflectionConfig = ReflectionConfig()
    lora: LoraConfig = LoraConfig()
    fsdp: bool = False  # full fine-tuning of larger students on GPUs
    bf16: bool = True  # autocast where the hardware has it
    all_rounds_data: bool = False  # train on every round's accepted rationales so far
    replay: int = Field(0, ge=0, description="earlier accepted items replayed in rounds >= 2")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = {}
    device: Device = "auto"
    placement_strategy: Placement = "PACK"  # of Ray Train's worker placement group; SPREAD: across nodes
    checkpoint_every_steps: int = Field(50, ge=1)
    max_failures: int = Field(2, ge=0)
    threads_per_worker: int | None = Field(None, ge=1)
    # Memory (docs/memory.md): these change what a step holds at once, not what it computes, so a run dir may be
    # resumed with other values (MEMORY_KEYS). Activations grow with the padded tokens of one forward (~2 MB per
    # token for SmolLM2-135M in float32): a planned batch is cut into micro-batches of at most this many padded
    # tokens whose gradients add up to the batch's (None: the whole batch at once). 1536: the demo's batches (<= ~1,500)
    # stay whole; a gsm8k triplet item (~3 x 325) runs alone, ~4.5 GB.
    max_tokens_per_micro_batch: int | None = Field(1536, ge=1)
    # Token positions whose full-vocabulary logits exist at once in the loss (0: the model's [B,T,V] logits).
    logits_chunk_tokens: int = Field(1024, ge=0)
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward (~1/3 more time)


def round_train(train: TrainConfig, k: int) -> TrainConfig:
    """What round k trains with: before reflection.start_round, λ = 0 at train.lr; from it on, the reflection
    loss at reflection.lr (or train.lr)."""
    rcfg = train.reflection
    if k < rcfg.start_round:
        return train.model_copy(update={"reflection": rcfg.model_copy(update={"weight": 0.0})})
    return train.model_copy(update={"lr": rcfg.lr}) if rcfg.lr is not None else train


# Keys that change a run's memory, not its results: a run dir may be resumed with other values (rundir.py).
MEMORY_KEYS = ("train.max_tokens_per_micro_batch", "train.logits_chunk_tokens", "train.gradient_checkpointing")


class RayConfig(_Section):
    address: str | None = None  # None = start (or join via RAY_ADDRESS) a local cluster
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    resources: dict[str, float] = {}
    include_dashboard: bool = False


class TrackingConfig(_Section):
    wandb: bool = True
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "rbyr-ray"
    entity: str | None = None
    tags: list[str] = []


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 0
    run_dir: str | None = None  # None = runs/<name>-<timestamp>
    rounds: int = Field(3, ge=1)
    patience: int | None = Field(None, ge=1, description="stop when test accuracy has not risen for N rounds")
    task: TaskConfig = TaskConfig()
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig = TeacherConfig()
    exam: ExamConfig = ExamConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.reflection.weight=0.3` -> (["train", "reflection", "weight"], 0.3); values are YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = prefix + (str(key_node.value),)
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _section_and_field(path: tuple[str, ...], root: type[BaseModel] | None = None) -> tuple[type[BaseModel] | None, str]:
    """The model class that holds the last key of `path`, and that key (None when the path leaves the schema)."""
    model: type[BaseModel] | None = root or ExperimentConfig
    for part in path[:-1]:
        field = model.model_fields.get(part) if model else None
        annotation = field.annotation if field else None
        if get_origin(annotation) in (Union, UnionType):  # an optional section (Model | None): the model's keys
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model, path[-1] if path else ""


def _type_name(annotation: Any) -> str:
    args = get_args(annotation)
    if get_origin(annotation) in (Union, UnionType) and type(None) in args:  # Optional[X]: "X or null"
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _expected(err: dict, path: tuple[str, ...], root: type[BaseModel] | None = None) -> str:
    model, key = _section_and_field(path, root)
    if err.get("type") == "extra_forbidden":
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key{hint} (valid keys here: {', '.join(valid)})"
    field = model.model_fields.get(key) if model else None
    expected = f"expected {_type_name(field.annotation)}: " if field is not None else ""
    return expected + err.get("msg", "")


def validate_config(data: dict, source: str = "<config>", lines: dict | None = None,
                    overrides: tuple[str, ...] = (), model: type[BaseModel] | None = None,
                    what: str = "config") -> Any:
    """`data` validated as `model` (default ExperimentConfig; a task file is another), or a ConfigError naming
    file:line (or the override) and key of every problem."""
    root = model or ExperimentConfig
    try:
        return root.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # Validators of a whole section report at the section; literal/union members add loc parts.
            path = tuple(str(p) for p in err["loc"] if isinstance(p, str))
            key = ".".join(path) or "<root>"
            where = source
            line = (lines or {}).get(path)
            if line is not None:
                where = f"{source}:{line}"
            # The override that set this key, or one below it ("rounds.x=1" makes `rounds` a mapping).
            override = next((o for o in overrides if (o.split("=", 1)[0].strip() + ".").startswith(key + ".")), None)
            if override is not None:
                where = f"override {override!r}"
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            problems.append(f"{where}: {key}: {_expected(err, path, root)}{got_text}")
        raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(problems)) from None


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, section by section."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file", top: str = "sections",
                      error: type[ConfigError] = ConfigError) -> tuple[dict, str]:
    """(data, text) of a YAML file whose top level is a mapping; anything else is one line naming the file."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{path}: no such {what}")
    text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of {top}")
    return data, text


def read_yaml_config(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> tuple[dict, dict]:
    """(data, key lines) of a config file; a top-level `base: other.yaml` (relative to the file) is loaded first."""
    p = Path(path)
    if p.is_file() and p.resolve() in _seen:
        raise ConfigError(f"{path}: `base` includes form a cycle")
    data, text = read_yaml_mapping(path)
    lines = _yaml_lines(text)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: expected the path of another config file")
        base_data, _ = read_yaml_config(p.parent / base, _seen + (p.resolve(),))
        data = deep_merge(base_data, data)
    return data, lines


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML experiment config (or the defaults when path is None) and apply dotted overrides.

    A config may start from another one with `base: other.yaml` and change only what differs.
    """
    data: dict = {}
    lines: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data, lines = read_yaml_config(path)
    data = apply_overrides(data, list(overrides))
    return validate_config(data, source, lines, tuple(overrides))
