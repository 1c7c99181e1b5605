"""ExperimentConfig: METHOD.md defaults, YAML + dotted overrides, errors that name key, file, line and type."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import BaseModel

from rbyr_ray.config import ConfigError, ExperimentConfig, load_config


def test_defaults_are_method_md():
    cfg = load_config()
    assert (cfg.exam.samples, cfg.exam.temperature, cfg.exam.top_k) == (4, 1.0, 50)
    assert cfg.train.reflection.weight == 0.5
    assert cfg.train.reflection.margin == 1.0
    assert cfg.train.reflection.pooling == "last"
    assert cfg.train.w_prefix == 0.1
    assert (cfg.train.reflection.max_positives, cfg.train.reflection.max_negatives) == (10, 4)
    assert cfg.train.reflection.max_rationale_tokens == 192
    assert cfg.rounds == 3
    assert cfg.teacher.samples >= 2  # a second accepted rationale is the reflection positive
    assert cfg.teacher.use_hint is True
    assert cfg == ExperimentConfig()


def _yaml(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = _yaml(tmp_path, "name: demo\nrounds: 2\ntask:\n  name: svamp\ntrain:\n  lr: 1.0e-4\n")
    cfg = load_config(path, ["train.reflection.weight=0.3", "rounds=4", "train.lora.target_modules=[q_proj,v_proj]",
                             "task.data_dir=/data", "exam.max_new_tokens=null"])
    assert (cfg.name, cfg.rounds, cfg.task.name, cfg.train.lr) == ("demo", 4, "svamp", 1e-4)
    assert cfg.train.reflection.weight == 0.3
    assert cfg.train.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.task.data_dir == "/data" and cfg.exam.max_new_tokens is None
    assert cfg.exam.samples == 4  # untouched keys keep their defaults


def test_dumped_config_loads_back(tmp_path):
    cfg = load_config(None, ["rounds=5", "train.reflection.weight=0.0", "tracking.tags=[a,b]"])
    again = load_config(_yaml(tmp_path, cfg.to_yaml()))
    assert again == cfg


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = _yaml(tmp_path, "name: x\ntrain:\n  lr: 0.001\n  lamda: 0.3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:4" in message and "train.lamda" in message and "unknown key" in message


def test_unknown_override_key_suggests_the_near_one():
    with pytest.raises(ConfigError, match=r"override 'train\.reflection\.wieght=0\.3'.*did you mean 'weight'"):
        load_config(None, ["train.reflection.wieght=0.3"])


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = _yaml(tmp_path, "rounds: 3\ntrain:\n  reflection:\n    weight: heavy\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert re.search(rf"{re.escape(str(path))}:4: train\.reflection\.weight: expected float", str(err.value))
    with pytest.raises(ConfigError, match=r"exam\.samples: expected int"):
        load_config(None, ["exam.samples=2.5"])
    with pytest.raises(ConfigError, match=r"task\.name: expected Literal\[.*'gsm8k'"):
        load_config(None, ["task.name=imagenet"])
    with pytest.raises(ConfigError, match=r"train\.reflection: expected ReflectionConfig"):
        load_config(None, ["train.reflection=3"])


def test_every_problem_is_reported_at_once(tmp_path):
    path = _yaml(tmp_path, "rounds: many\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:1: rounds" in str(err.value) and f"{path}:2: bogus" in str(err.value)


def test_value_constraints_are_checked():
    with pytest.raises(ConfigError, match="rounds"):
        load_config(None, ["rounds=0"])
    with pytest.raises(ConfigError, match="min_steps"):
        load_config(None, ["task.arith.min_steps=4", "task.arith.max_steps=2"])


def test_reflection_kind_and_beta_errors_name_the_key(tmp_path):
    cfg = load_config()
    assert (cfg.train.reflection.kind, cfg.train.reflection.beta) == ("triplet", 0.1)  # the paper's; DPO's beta
    with pytest.raises(ConfigError, match=r"override 'train\.reflection\.kind=dpo': train\.reflection\.kind: "
                                          r"expected Literal\['triplet', 'ranking', 'hinge', 'redi', 'dpop'\].*got 'dpo'"):
        load_config(None, ["train.reflection.kind=dpo"])
    for beta in ("0", "-0.5"):
        with pytest.raises(ConfigError, match=r"train\.reflection\.beta: expected float: .*greater than 0"):
            load_config(None, [f"train.reflection.beta={beta}"])
    path = _yaml(tmp_path, "train:\n  reflection:\n    kind: rank\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:3: train\.reflection\.kind"):
        load_config(path)
    assert load_config(None, ["train.reflection.kind=ranking", "train.reflection.beta=0.5"]).train.reflection.beta == 0.5


def test_learning_from_mistakes_settings_errors_name_the_key(tmp_path):
    """Issue 21: a non-positive δ (margin) or β, a learning rate <= 0, a first reflection round < 1."""
    for kind in ("hinge", "redi", "dpop"):
        assert load_config(None, [f"train.reflection.kind={kind}"]).train.reflection.kind == kind
    for key, value, message in [("margin", "0", "greater than 0"), ("margin", "-0.1", "greater than 0"),
                                ("beta", "0", "greater than 0"), ("lr", "0", "greater than 0"),
                                ("lr", "-1e-5", "greater than 0"), ("penalty", "-1", "greater than or equal to 0"),
                                ("start_round", "0", "greater than or equal to 1")]:
        with pytest.raises(ConfigError, match=rf"train\.reflection\.{key}: .*{message}"):
            load_config(None, ["train.reflection.kind=hinge", f"train.reflection.{key}={value}"])
    path = _yaml(tmp_path, "train:\n  reflection:\n    kind: dpop\n    lr: 0.0\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:4: train\.reflection\.lr"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"train\.lr: .*greater than 0"):
        load_config(None, ["train.lr=0"])


def test_round_train_sft_rounds_then_the_reflection_rounds_at_their_own_rate():
    """Defaults are the paper's: the loss acts from round 1 at train.lr. With start_round 2 and a reflection lr,
    round 1 is λ = 0 at train.lr and round 2 trains L_lm + λ·L_kind at the reflection lr."""
    from rbyr_ray.config import round_train

    paper = load_config().train
    assert (paper.reflection.start_round, paper.reflection.lr, paper.reflection.penalty) == (1, None, 50.0)
    assert round_train(paper, 1) == paper and round_train(paper, 3) == paper
    train = load_config(None, ["train.lr=1e-3", "train.reflection.kind=hinge", "train.reflection.weight=0.5",
                               "train.reflection.start_round=2", "train.reflection.lr=1e-4"]).train
    first, second = round_train(train, 1), round_train(train, 2)
    assert (first.lr, first.reflection.weight, first.reflection.kind) == (1e-3, 0.0, "hinge")
    assert (second.lr, second.reflection.weight) == (1e-4, 0.5)
    assert train.lr == 1e-3 and train.reflection.weight == 0.5  # the config itself is unchanged


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", "top level must be a mapping"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_yaml(tmp_path, text))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["rounds"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(None, ["rounds=2", "rounds.x=1"])
    with pytest.raises(ConfigError, match=r"override 'rounds\.x=1': rounds: expected int"):
        load_config(None, ["rounds.x=1"])


def _field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names += _field_names(field.annotation, f"{prefix}{name}.")
    return names


def test_api_key_is_only_ever_an_environment_variable_name(monkeypatch):
    secret_fields = [n for n in _field_names(ExperimentConfig) if re.search(r"key|secret|token$|password", n)]
    assert secret_fields == ["teacher.api_key_env"]
    with pytest.raises(ConfigError, match=r"teacher\.api_key: unknown key"):
        load_config(None, ["teacher.api_key=sk-live-123"])
    with pytest.raises(ConfigError, match="name of an environment variable"):
        load_config(None, ["teacher.api_key_env=sk-live-123"])
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-live-123")
    cfg = load_config(None, ["teacher.api_key_env=MY_TEACHER_KEY"])
    dumped = cfg.to_yaml()
    assert "sk-live-123" not in dumped and yaml.safe_load(dumped)["teacher"]["api_key_env"] == "MY_TEACHER_KEY"


def test_a_run_dir_config_from_before_the_exam_placement_change_still_loads(tmp_path, caplog):
    # exam.placement_strategy went with Ray 2.60's deprecations; older run dirs must still resume.
    path = tmp_path / "config.yaml"
    path.write_text("exam:\n  placement_strategy: PACK\n  samples: 2\n")
    with caplog.at_level("WARNING"):
        cfg = load_config(path)
    assert cfg.exam.samples == 2 and "placement_strategy" not in cfg.exam.model_dump()
    assert "exam.placement_strategy is no longer used" in caplog.text
