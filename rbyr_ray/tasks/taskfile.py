"""A task declared in a YAML file: data, fields, answer type, generation budget and prompts (docs/tasks.md).

    data = load_task_file("my_task.yaml")          # TaskData, like a built-in task's
    data.prompts.cot_messages(data.train[0])       # the teacher's round-1 prompt

One pydantic schema (`TaskFile`), validated with the experiment config's machinery, so an error names the
file, line and key. Data errors (a missing file or split, a field the records lack, an empty split, a
duplicate id, a gold answer the grader cannot read) name the data file and line. Everything is checked when
the task is loaded, before any stage starts.

Local files are read here directly (no cluster needed to check a task file); a URI (`s3://`, `gs://`,
`file://`, ...) goes through Ray Data's readers, so a cluster reads cloud storage with nothing else changed.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import ArithConfig, ConfigError, _yaml_lines, deep_merge, read_yaml_mapping, validate_config
from . import prompts
from .files import read_jsonl
from .graders import BUILTIN_TYPES, GraderError, is_grader_name, load_grader, normalise_text
from .records import Record, TaskData

FORMATS = ("jsonl", "json", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
               ".pq": "parquet"}
DEFAULT_ANSWER_FORM = "the final answer, as short as possible"
FEEDBACK_FIELDS = ("question_block", "question", "choices", "wrong_rationale", "hint", "answer", "answer_form")


class TaskFileError(ConfigError):
    """A task file or its data that cannot be used; one line naming the file, line and key."""


# ------------------------------------------------------------------------------------------------ schema


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Spec):
    """One data file: a local path (relative to the task file) or a URI read by Ray Data."""

    path: str
    format: Literal["jsonl", "json", "csv", "parquet"] | None = None  # None: from the extension
    key: str | None = None  # json: the key of the object that holds the array of records


class HubSource(_Spec):
    """A Hugging Face dataset; read only where `task.allow_hub_download` is true (never by default)."""

    name: str
    config: str | None = None
    revision: str | None = None
    train: str = "train"
    test: str = "test"
    val: str | None = None


class DataSpec(_Spec):
    # A named reader of a dataset's original format (readers.READERS: gsm8k, asdiv, ...): it makes the records
    # itself, from sources relative to the benchmark data folder (task.data_dir, $RBYR_DATA_DIR), so no
    # `fields`. None: records from the sources' fields.
    reader: str | None = None
    options: dict[str, Any] = {}  # the reader's own settings (asdiv: its folds)
    train: Source | str | None = None
    test: Source | str | None = None
    val: Source | str | None = None
    # Or one source, split with a seeded test fraction.
    source: Source | str | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)
    seed: int = 0
    hub: HubSource | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> DataSpec:
        splits = self.train is not None or self.test is not None
        layouts = [splits, self.source is not None, self.hub is not None]
        if self.reader is not None:
            return self._reader_layout(splits)
        if self.options:
            raise ValueError("`options` are a named reader's (data.reader)")
        if sum(layouts) != 1:
            raise ValueError("give train + test (+ val) sources, or `source` + `test_fraction`, or `hub`; "
                             "exactly one of them")
        if splits and (self.train is None or self.test is None):
            raise ValueError(f"the {'test' if self.test is None else 'train'} split has no source")
        if (self.source is None) != (self.test_fraction is None):
            raise ValueError("`source` and `test_fraction` go together")
        if self.val is not None and not splits:
            raise ValueError("`val` goes with train + test sources (else use task.val_fraction)")
        return self

    def _reader_layout(self, splits: bool) -> DataSpec:
        """A reader reads train + test (+ val), or one `source` it splits itself, or no file at all (arith)."""
        if self.hub is not None:
            raise ValueError("a named reader reads files, not `hub`")
        if splits and (self.train is None or self.test is None):
            raise ValueError(f"the {'test' if self.test is None else 'train'} split has no source")
        if splits and self.source is not None:
            raise ValueError("give train + test (+ val) sources or `source`, not both")
        return self

    def sources(self) -> dict[str, Source]:
        named = {"train": self.train, "test": self.test, "val": self.val, "source": self.source}
        return {k: Source(path=v) if isinstance(v, str) else v for k, v in named.items() if v is not None}


class FieldsSpec(_Spec):
    # A field name, or a template over several fields: "{body} {question}".
    question: str
    answer: str
    # A field holding a list of options, a field holding all options in one text ("A) 21 B) 22"),
    # or one field per option: [A, B, C, D].
    choices: str | list[str] | None = None
    solution: str | None = None  # a worked solution; a final answer line at its end is cut off
    id: str | None = None  # None: "<task>-<split>-<row>"
    tags: list[str] = []  # fields kept as tags (the report's weak spots per tag)


class Demo(_Spec):
    question: str
    choices: list[str] = []
    rationale: str
    answer: str


class PromptsSpec(_Spec):
    """None everywhere = today's prompts (tasks/prompts.py, METHOD.md)."""

    answer_form: str | None = None  # what X is in "Answer: X" (default per answer type, prompts.ANSWER_FORMS)
    teacher_system: str | None = None  # may use {answer_form}
    few_shot: list[Demo] | str | None = None  # the teacher's demonstrations, inline or a YAML/JSONL file
    feedback: str | None = None  # the feedback request (rounds >= 2); placeholders: FEEDBACK_FIELDS
    student: str | None = None  # the student's prefix (exam, evaluation, training); placeholders: STUDENT_FIELDS

    @field_validator("teacher_system")
    @classmethod
    def _system_fields(cls, value: str | None) -> str | None:
        if value is not None:
            _check_template(value, ("answer_form",))
        return value

    @field_validator("feedback")
    @classmethod
    def _feedback_fields(cls, value: str | None) -> str | None:
        if value is not None:
            _check_template(value, FEEDBACK_FIELDS)
        return value

    @field_validator("student")
    @classmethod
    def _student_fields(cls, value: str | None) -> str | None:
        if value is not None:
            _check_template(value, prompts.STUDENT_FIELDS)
        return value


class GenerationSpec(_Spec):
    max_new_tokens: int = Field(256, ge=1, description="the exam/eval generation budget")
    # Where the student's answer ends (exam, evaluation, the student teacher) and what separates its few-shot
    # demonstrations; the default is a blank line.
    stop: str = Field(prompts.STOP, min_length=1)


class TaskFile(_Spec):
    name: str | None = None  # None: the file's stem
    description: str = ""
    data: DataSpec
    fields: FieldsSpec | None = None  # required unless a named reader makes the records (data.reader)
    answer_type: str = Field(description="numeric, yesno, choice, text, or package.module:function")
    generation: GenerationSpec = GenerationSpec()
    prompts: PromptsSpec = PromptsSpec()

    @field_validator("answer_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in BUILTIN_TYPES and not is_grader_name(value):
            raise ValueError(f"expected one of {', '.join(BUILTIN_TYPES)} or a grader package.module:function")
        return value

    @model_validator(mode="after")
    def _fields_or_reader(self) -> TaskFile:
        if self.data.reader is None and self.fields is None:
            raise ValueError("`fields` is required (which field is the question, which the answer, ...)")
        if self.data.reader is not None and self.fields is not None:
            raise ValueError(f"data.reader {self.data.reader} makes the records itself; remove `fields`")
        return self


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _check_template(template: str, allowed: tuple[str, ...] | None = None) -> None:
    try:
        names = template_fields(template)
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    for name in names:
        if not name.isidentifier():  # no attribute or index access: "{a.b}", "{a[0]}"
            raise ValueError(f"template field {{{name}}}: expected a plain field name")
        if allowed is not None and name not in allowed:
            raise ValueError(f"template field {{{name}}}: expected one of {', '.join(allowed)}")


# ------------------------------------------------------------------------------------------------ prompts


Demos = tuple[tuple[str, tuple[str, ...], str, str], ...]  # (question, choices, rationale, answer) each


@dataclass(frozen=True)
class TaskPrompts:
    """The student's and the teacher's prompts for one task. With nothing set they are exactly today's
    (prompts.py): the answer type's demonstrations, the blank-line stop."""

    answer_type: str
    answer_form: str | None = None
    system: str | None = None
    demos: Demos | None = None
    feedback: str | None = None
    student: str | None = None  # the student's prefix template (None: prompts.STUDENT_PREFIX)
    stop: str = prompts.STOP  # where the student's answer ends

    @property
    def _kind(self) -> str:
        """The answer type prompts.py knows that stands for this one (its message layout only)."""
        return self.answer_type if self.answer_type in prompts.ANSWER_FORMS else "numeric"

    @property
    def _own_system(self) -> bool:
        return (self.system is not None or self.answer_form is not None
                or self.answer_type not in prompts.ANSWER_FORMS)

    def form(self) -> str:
        return self.answer_form or prompts.ANSWER_FORMS.get(self.answer_type) or DEFAULT_ANSWER_FORM

    def system_text(self) -> str:
        return (self.system or prompts.TEACHER_SYSTEM).format(answer_form=self.form())

    def student_prefix(self, record: Record, demos: list[tuple[Record, str]] | None = None) -> str:
        """The exam/eval/training prefix, in this task's template and with its stop after each demonstration."""
        return prompts.student_prefix(record, demos, template=self.student or prompts.STUDENT_PREFIX, stop=self.stop)

    def cot_messages(self, record: Record, few_shot: bool = True) -> list[dict]:
        if not self._own_system and self.demos is None:
            return prompts.teacher_cot_messages(record, self.answer_type, few_shot=few_shot)
        own_demos = self.demos is not None or self._kind != self.answer_type
        messages = prompts.teacher_cot_messages(record, self._kind, few_shot=few_shot and not own_demos)
        messages[0] = {"role": "system", "content": self.system_text()}
        if few_shot and own_demos:
            shots = []
            for question, choices, rationale, answer in self.demos or ():
                demo = Record(id="demo", question=question, answer=answer, choices=choices)
                shots.append({"role": "user", "content": prompts.question_block(demo).strip()})
                shots.append({"role": "assistant", "content": prompts.student_target(rationale, answer)})
            messages[1:1] = shots
        return messages

    def feedback_messages(self, record: Record, wrong_rationale: str, use_hint: bool = True) -> list[dict]:
        messages = prompts.teacher_feedback_messages(record, wrong_rationale, self._kind, use_hint=use_hint)
        if self._own_system:
            messages[0] = {"role": "system", "content": self.system_text()}
        if self.feedback is not None:
            answer = prompts._answer_text(record)
            values = {"question_block": prompts.question_block(record), "question": record.question,
                      "choices": prompts.format_choices(record.choices),
                      "wrong_rationale": prompts.fold_rationale(wrong_rationale),
                      "hint": f"Hint: the correct answer is {answer}.\n" if use_hint else "",
                      "answer": answer, "answer_form": self.form()}
            messages[-1] = {"role": "user", "content": self.feedback.format(**values)}
        return messages


def task_prompts(task: str | TaskPrompts | None, answer_type: str) -> TaskPrompts:
    """The prompts of `task`: a TaskPrompts as is, a built-in task's name as its file's, None as the defaults."""
    if isinstance(task, TaskPrompts):
        return task
    if task is None:
        return TaskPrompts(answer_type)
    return file_prompts(read_task_file(builtin_path(task)))


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class _Row:
    where: str  # "data/train.jsonl:3", "data/train.parquet row 3"
    values: dict


@dataclass
class _File:
    """A task file read and validated, with what its error messages need."""

    spec: TaskFile
    path: str
    lines: dict = field(default_factory=dict)
    overridden: frozenset = frozenset()  # the keys set by task.spec ("prompts.few_shot", ...)

    def at(self, *key: str) -> str:
        line = self.lines.get(tuple(key))
        return f"{self.path}:{line}" if line else self.path

    def error(self, key: tuple[str, ...], message: str) -> TaskFileError:
        return TaskFileError(f"{self.at(*key)}: {'.'.join(key)}: {message}")


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def read_task_file(path: str | os.PathLike, overrides: dict | None = None) -> _File:
    """Read and validate a task file; `overrides` (task.spec) are merged over it, key by key."""
    source = str(path)
    data, text = read_yaml_mapping(path, "task file", "keys (data, fields, answer_type, ...)", TaskFileError)
    overrides = overrides or {}
    data = deep_merge(data, overrides)
    shown = tuple(f"{key}={json.dumps(value)}" for key, value in _flatten(overrides))
    spec = validate_config(data, source, _yaml_lines(text), shown, model=TaskFile, what="task file")
    return _File(spec, source, _yaml_lines(text), frozenset(key for key, _ in _flatten(overrides)))


def _is_uri(path: str) -> bool:
    return "://" in path


def _shown(path: str) -> str:
    if _is_uri(path):
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _plain(value: Any) -> Any:
    """Ray Data and Parquet give numpy arrays and scalars; records want plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _read_source(tf: _File, split: str, src: Source) -> list[_Row]:
    key = ("data", split)
    base = Path(tf.path).parent
    path = src.path if _is_uri(src.path) or Path(src.path).is_absolute() else str(base / src.path)
    fmt = src.format or next((f for ext, f in _EXTENSIONS.items() if src.path.lower().endswith(ext)), None)
    if fmt is None:
        raise tf.error(key, f"cannot tell the format of {src.path}; set format: one of {', '.join(FORMATS)}")
    if src.key is not None and fmt != "json":
        raise tf.error(key, f"`key` is for json sources, not {fmt}")
    shown = _shown(path)
    if _is_uri(path):
        rows = _read_with_ray_data(path, fmt)
        records = _json_records(tf, key, shown, rows, src.key) if fmt == "json" else rows
        return [_Row(f"{shown} row {i}", r) for i, r in enumerate(records, 1)]
    if not Path(path).is_file():
        raise tf.error(key, f"no such file: {shown}")
    if fmt == "jsonl":
        return [_Row(f"{shown}:{lineno}", value) for lineno, value in read_jsonl(Path(path), shown, TaskFileError)]
    if fmt == "json":
        try:
            value = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"{shown}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        return [_Row(f"{shown} item {i}", r) for i, r in enumerate(_json_records(tf, key, shown, value, src.key), 1)]
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            return [_Row(f"{shown}:{reader.line_num}", dict(row)) for row in reader]
    import pyarrow.parquet as pq

    return [_Row(f"{shown} row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1)]


def _json_records(tf: _File, key: tuple[str, ...], shown: str, value: Any, array_key: str | None) -> list[dict]:
    if isinstance(value, dict):
        if array_key is None:
            lists = [k for k, v in value.items() if isinstance(v, list)]
            raise tf.error(key, f"{shown} holds an object, not an array; set key: to the one holding the records"
                           + (f" ({', '.join(lists)})" if lists else ""))
        if not isinstance(value.get(array_key), list):
            raise tf.error(key, f"{shown} has no array under {array_key!r}")
        value = value[array_key]
    elif array_key is not None:
        raise tf.error(key, f"{shown} holds an array, not an object with {array_key!r}")
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise tf.error(key, f"{shown}: expected an array of objects")
    return value


def _read_with_ray_data(uri: str, fmt: str) -> Any:
    """Rows of a URI through Ray Data (`read_json` / `read_csv` / `read_parquet`), in file order."""
    import ray

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    if fmt == "json":  # one document (an array, or an object holding one): read whole, parsed here
        blob = ray.data.read_binary_files(uri).take_all()
        return json.loads(b"".join(row["bytes"] for row in blob))
    reader = {"jsonl": lambda: ray.data.read_json(uri, lines=True), "csv": lambda: ray.data.read_csv(uri),
              "parquet": lambda: ray.data.read_parquet(uri)}[fmt]
    return [{k: _plain(v) for k, v in row.items()} for row in reader().take_all()]


def _read_hub(tf: _File, allow_hub: bool) -> dict[str, list[_Row]]:
    hub = tf.spec.data.hub
    assert hub is not None
    if not allow_hub:
        raise tf.error(("data", "hub"), f"reading {hub.name} from the Hugging Face hub needs "
                       "task.allow_hub_download=true (off by default)")
    try:
        import datasets
    except ImportError:
        raise tf.error(("data", "hub"), "the `datasets` package is not installed") from None
    out = {}
    for split, name in (("train", hub.train), ("test", hub.test), ("val", hub.val)):
        if name is not None:
            ds = datasets.load_dataset(hub.name, hub.config, split=name, revision=hub.revision)
            out[split] = [_Row(f"{hub.name}[{name}] row {i}", dict(r)) for i, r in enumerate(ds, 1)]
    return out


# ------------------------------------------------------------------------------------------------ records

_OPTION_LABEL = re.compile(r"^\s*\(?\s*([a-eA-E])\s*[).:]\s*")
_OPTIONS_IN_TEXT = re.compile(r"(?:^|\s)\(?([a-eA-E])\)\s*")
_LETTER = re.compile(r"^\(?\s*([a-eA-E])\s*[).]?$")
_ANSWER_LINE = re.compile(r"^\s*(?:####|(?:the\s+)?(?:final\s+)?answer\s*[:=]|(?:so\s+)?the\s+(?:final\s+)?answer\s+is\b)",
                          re.IGNORECASE)


def cut_solution(text: str) -> str:
    """A worked solution without its own final answer line ("#### 72", "Answer: 72", "The answer is 72.")."""
    lines = text.strip().split("\n")
    if len(lines) > 1 and _ANSWER_LINE.match(lines[-1]):
        lines = lines[:-1]
    return "\n".join(lines).strip()


def _options(value: Any) -> list[str]:
    """Option texts from a list ("A)21", "(a) 21", "21") or one text holding all ("A) 21 B) 22")."""
    if isinstance(value, str):
        parts = _OPTIONS_IN_TEXT.split(value.strip())
        # split gives [before, letter, text, letter, text, ...]
        return [parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)] if len(parts) > 2 else []
    texts = [str(_plain(v)).strip() for v in value]
    labels = [m.group(1).lower() if (m := _OPTION_LABEL.match(t)) else None for t in texts]
    if labels != list("abcde"[: len(texts)]):  # labels only when every option has its own, in order ("E. coli")
        return texts
    return [_OPTION_LABEL.sub("", t, count=1).strip() for t in texts]


def _gold(answer_type: str, raw: Any, choices: tuple[str, ...]) -> str:
    """The gold answer in the record's normal form; ValueError when it cannot be read."""
    from .grading import format_number, parse_number

    text = str(_plain(raw)).strip() if raw is not None else ""
    if not text:
        raise ValueError("empty gold answer")
    if answer_type == "numeric":
        value = format_number(parse_number(text))
        if value is None:
            raise ValueError(f"gold answer {text!r} is not a number")
        return value
    if answer_type == "yesno":
        word = {"true": "yes", "false": "no", "1": "yes", "0": "no"}.get(text.lower(), text.lower()).strip(". ")
        if word not in ("yes", "no"):
            raise ValueError(f"gold answer {text!r} is not yes or no")
        return word
    if answer_type == "choice":
        match = _LETTER.match(text)
        letter = match.group(1).lower() if match else next(
            (letter for letter, c in zip("abcde", choices) if normalise_text(c) == normalise_text(text)), None)
        if letter is None or "abcde".index(letter) >= len(choices):
            raise ValueError(f"gold answer {text!r} is not the letter (or text) of one of the "
                             f"{len(choices)} choices")
        return letter
    return text


def _field(row: _Row, name: str, tf: _File, key: tuple[str, ...]) -> Any:
    if name not in row.values:
        close = difflib.get_close_matches(name, [str(k) for k in row.values], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TaskFileError(f"{row.where}: no field {name!r} ({'.'.join(key)} in {tf.at(*key)}{hint}; "
                            f"the record's fields: {', '.join(sorted(map(str, row.values)))})")
    return row.values[name]


def _question(row: _Row, tf: _File) -> str:
    spec = tf.spec.fields.question
    if "{" in spec:
        values = {name: _field(row, name, tf, ("fields", "question")) for name in template_fields(spec)}
        text = spec.format(**{k: "" if v is None else _plain(v) for k, v in values.items()})
    else:
        text = str(_plain(_field(row, spec, tf, ("fields", "question"))) or "")
    # One line, as the built-in tasks' questions: the local teacher finds the question on its prompt line.
    text = " ".join(text.split())
    if not text:
        raise TaskFileError(f"{row.where}: empty question")
    return text


def _record(row: _Row, n: int, default_id: str, tf: _File) -> Record:
    f, answer_type = tf.spec.fields, tf.spec.answer_type
    choices: tuple[str, ...] = ()
    if f.choices is not None:
        if isinstance(f.choices, list):
            choices = tuple(_options([_field(row, c, tf, ("fields", "choices")) for c in f.choices]))
        else:
            value = _field(row, f.choices, tf, ("fields", "choices"))
            choices = tuple(_options(value if isinstance(value, str) else list(_plain(value) or [])))
        if not 2 <= len(choices) <= 5:
            raise TaskFileError(f"{row.where}: expected 2 to 5 choices, got {len(choices)}")
    elif answer_type == "choice":
        raise tf.error(("fields", "choices"), "answer_type choice needs fields.choices")
    try:
        answer = _gold(answer_type, _field(row, f.answer, tf, ("fields", "answer")), choices)
    except ValueError as exc:
        raise TaskFileError(f"{row.where}: {exc} (answer_type {answer_type})") from None
    solution = None
    if f.solution is not None:
        raw = _field(row, f.solution, tf, ("fields", "solution"))
        solution = cut_solution(str(_plain(raw))) if raw not in (None, "") else None
    rid = str(_plain(_field(row, f.id, tf, ("fields", "id")))) if f.id is not None else default_id
    tags = {t: str(_plain(_field(row, t, tf, ("fields", "tags")))) for t in f.tags}
    return Record(id=rid, question=_question(row, tf), answer=answer, choices=choices, solution=solution, tags=tags)


def _self_check(record: Record, where: str, answer_type: str) -> None:
    """The gold answer, written as the prompts ask ("Answer: X"), must grade correct against itself."""
    from .grading import grade

    try:
        ok = grade(answer_type, f"{prompts.ANSWER_PREFIX}{record.answer}", record.answer, record.choices)
    except GraderError as exc:
        raise TaskFileError(f"{where}: {exc}") from None
    if not ok:
        raise TaskFileError(f"{where}: gold answer {record.answer!r} does not grade correct against itself "
                            f"(answer_type {answer_type})")


def _demos(tf: _File) -> Demos | None:
    few = tf.spec.prompts.few_shot
    if few is None:
        return None
    if isinstance(few, str):
        # A file beside the task file; a built-in's is in the package, so an override's is the user's own.
        builtin_override = "prompts.few_shot" in tf.overridden and Path(tf.path).parent == BUILTIN_DIR
        path = Path(few) if builtin_override else Path(tf.path).parent / few
        if not path.is_file():
            raise tf.error(("prompts", "few_shot"), f"no such file: {_shown(str(path))}")
        try:
            few = [Demo.model_validate(d) for d in prompts.read_demo_items(path)]
        except Exception as exc:  # noqa: BLE001 - one line naming the file
            raise tf.error(("prompts", "few_shot"),
                           f"{_shown(str(path))}: expected a list of {{question, choices, rationale, answer}} "
                           f"({' '.join(str(exc).split())[:300]})") from None
    return tuple((d.question, tuple(d.choices), d.rationale, d.answer) for d in few)


def file_prompts(tf: _File) -> TaskPrompts:
    """A task file's prompts and the student's stop; what it leaves unset is today's (prompts.py)."""
    p = tf.spec.prompts
    return TaskPrompts(tf.spec.answer_type, answer_form=p.answer_form, system=p.teacher_system, demos=_demos(tf),
                       feedback=p.feedback, student=p.student, stop=tf.spec.generation.stop)


# ------------------------------------------------------------------------------------------------ built-ins

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


def builtin_names() -> list[str]:
    """The built-in tasks: the task files shipped in builtin/ (arith, gsm8k, ...)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def builtin_path(name: str) -> Path:
    path = BUILTIN_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown task {name!r}; available: {', '.join(builtin_names())}, "
                         "or a task file (docs/tasks.md)")
    return path


# ------------------------------------------------------------------------------------------------ loading


def _read_records(tf: _File, name: str, allow_hub: bool) -> dict[str, list[tuple[Record, str]]]:
    """(record, where) per split ("train", "test", "val", or "source"), from the sources' fields."""
    spec = tf.spec
    if spec.data.hub is not None:
        rows = _read_hub(tf, allow_hub)
    else:
        rows = {split: _read_source(tf, split, src) for split, src in spec.data.sources().items()}
    out = {}
    for split, got in rows.items():
        prefix = f"{name}-" if split == "source" else f"{name}-{split}-"
        out[split] = [(_record(row, n, f"{prefix}{n}", tf), row.where) for n, row in enumerate(got, 1)]
    return out


def _read_with_reader(tf: _File, name: str, data_dir: str | None,
                      arith: ArithConfig | None) -> dict[str, list[tuple[Record, str]]]:
    """(record, where) per split, made by the named reader from its own format (readers.py)."""
    from .readers import READERS, ReadContext

    data = tf.spec.data
    if data.reader not in READERS:
        close = difflib.get_close_matches(data.reader, list(READERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise tf.error(("data", "reader"), f"unknown reader {data.reader!r}{hint} (readers: {', '.join(READERS)})")
    sources = {split: src.path for split, src in data.sources().items()}
    ctx = ReadContext(name, sources, dict(data.options), data_dir, arith or ArithConfig(),
                      where=lambda key: f"{tf.at(*key.split('.'))}: {key}")
    splits = READERS[data.reader].read(ctx)
    return {split: [(r, f"{split} record {r.id} ({tf.path})") for r in records] for split, records in splits.items()}


def _check(splits: dict[str, list[tuple[Record, str]]], tf: _File) -> dict[str, list[Record]]:
    """No split empty, no id twice, every gold answer grades correct against itself."""
    seen: dict[str, str] = {}
    out = {}
    for split, got in splits.items():
        if not got:
            raise tf.error(("data", split), "no records")
        for record, where in got:
            if record.id in seen:
                raise TaskFileError(f"{where}: duplicate id {record.id!r} in {split} (first in {seen[record.id]})")
            seen[record.id] = f"{split}, {where}"
            _self_check(record, where, tf.spec.answer_type)
        out[split] = [record for record, _ in got]
    return out


def _split_source(splits: dict[str, list[Record]], tf: _File) -> dict[str, list[Record]]:
    """One `source` split into train and test with the file's seeded test fraction."""
    records = splits.pop("source")
    if tf.spec.data.test_fraction is None:
        raise tf.error(("data", "source"), "one source needs data.test_fraction (or a reader that splits it)")
    order = list(range(len(records)))
    random.Random(tf.spec.data.seed).shuffle(order)
    n_test = max(1, round(tf.spec.data.test_fraction * len(records)))
    if n_test >= len(records):
        raise tf.error(("data", "test_fraction"), f"leaves no training record of {len(records)}")
    test_idx = set(order[:n_test])
    splits["test"] = [r for i, r in enumerate(records) if i in test_idx]
    splits["train"] = [r for i, r in enumerate(records) if i not in test_idx]
    return splits


def load_task_file(path: str | os.PathLike, overrides: dict | None = None, allow_hub: bool = False, *,
                   data_dir: str | None = None, arith: ArithConfig | None = None) -> TaskData:
    """A task file's splits as TaskData (name, answer type, records, generation budget, prompts).

    `data_dir` (task.data_dir) is where a named reader's relative paths are read; `arith` (task.arith) the
    arith reader's settings. Every problem raises an error naming the file and line before anything else runs.
    """
    tf = read_task_file(path, overrides)
    spec = tf.spec
    name = spec.name or Path(str(path)).stem
    if is_grader_name(spec.answer_type):
        try:
            load_grader(spec.answer_type)
        except GraderError as exc:
            raise tf.error(("answer_type",), str(exc)) from None
    if spec.data.reader is not None:
        splits = _check(_read_with_reader(tf, name, data_dir, arith), tf)
    else:
        splits = _check(_read_records(tf, name, allow_hub), tf)
    if "source" in splits:
        splits = _split_source(splits, tf)
    rationale = None
    if spec.data.reader is not None:
        from .readers import READERS

        rationale = READERS[spec.data.reader].rationale
    return TaskData(name, spec.answer_type, train=splits["train"], test=splits["test"], val=splits.get("val", []),
                    max_new_tokens=spec.generation.max_new_tokens, prompts=file_prompts(tf), source=str(path),
                    rationale=rationale)
