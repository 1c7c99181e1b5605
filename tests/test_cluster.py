"""Scale-out on a real 2-node Ray cluster (ray.cluster_utils.Cluster: a head and a worker node on this machine).

Each node declares 1 logical GPU, so GPU placement is checked without a GPU: the stages ask Ray for GPUs
(exam.gpus_per_replica, train.use_gpu) while torch computes on the CPU (exam.device / train.device = cpu).
What happened is read back from Ray's state API (actors, and the worker processes behind them with their
start and end times), not from the code under test.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

import rbyr_ray
from rbyr_ray.config import ArithConfig, ExperimentConfig, load_config
from rbyr_ray.student.models import load_tokenizer, resolve_model_dir
from rbyr_ray.tasks.arith import generate
from rbyr_ray.train.data import build_train_items

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head: 2 CPUs, 1 GPU, the dashboard (the state API needs it); worker: 2 CPUs, 1 GPU. Both logical."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    # A free dashboard port: other Ray instances may share this machine.
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "resources": {"head_node": 1}, "object_store_memory": 200 * MiB,
        "include_dashboard": True, "dashboard_port": _free_port()})
    c.add_node(num_cpus=2, num_gpus=1, resources={"worker_node": 1}, object_store_memory=200 * MiB)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@dataclass(frozen=True)
class Span:
    """One actor and the lifetime of its worker process (ms since the epoch)."""

    cls: str
    node_id: str
    resources: dict
    start_ms: int
    end_ms: int


def _state(fn, **kwargs):
    """A state API call, retried while the dashboard is still coming up."""
    for attempt in range(30):
        try:
            return fn(**kwargs)
        except Exception:  # ServerUnavailable and connection errors look alike here
            if attempt == 29:
                raise
            time.sleep(1)


def spans(address: str, job_id: str) -> list[Span]:
    """Every actor of the job, alive from its constructor's start (the actor creation task) until its worker
    process ended: an actor's process is killed with it, while it may have been started idle long before."""
    from ray.util.state import list_actors, list_tasks, list_workers

    actors = _state(list_actors, address=address, filters=[("job_id", "=", job_id)], detail=True, limit=10_000)
    workers = {(w.node_id, w.pid): w for w in _state(list_workers, address=address, detail=True, limit=10_000)}
    created = {t.actor_id: t.start_time_ms for t in _state(
        list_tasks, address=address, filters=[("job_id", "=", job_id), ("type", "=", "ACTOR_CREATION_TASK")],
        detail=True, limit=10_000) if t.start_time_ms}
    out = []
    for a in actors:
        w = workers.get((a.node_id, a.pid))
        if w is None or not w.start_time_ms:
            continue  # never started (e.g. still pending when the stage ended)
        out.append(Span(a.class_name, a.node_id, dict(a.required_resources or {}),
                        created.get(a.actor_id, w.start_time_ms), w.end_time_ms or int(time.time() * 1000) + 10**9))
    return out


def assert_take_turns(all_spans: list[Span]) -> tuple[list[Span], list[Span]]:
    """No exam engine was alive while a training worker was, and the other way round."""
    exam = [s for s in all_spans if "ExamWorker" in s.cls]
    train = [s for s in all_spans if "RayTrainWorker" in s.cls]
    assert exam and train, sorted({s.cls for s in all_spans})
    for e in exam:
        for t in train:
            assert e.end_ms <= t.start_ms or t.end_ms <= e.start_ms, (e, t)
    return exam, train


def asks_gpu(span: Span) -> bool:
    # Inside a placement group Ray renames the resource: GPU_group_<pg id>.
    return any(k == "GPU" or k.startswith("GPU_group_") for k, v in span.resources.items() if v > 0)


# ------------------------------------------------------------------ the cluster configs (no cluster needed)


def test_launcher_config_matches_rays_schema():
    import json

    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((ROOT / "cluster" / "cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["GPU"] == 0  # GPU work never lands on the driver's node
    assert all(t["resources"]["GPU"] > 0 for k, t in cfg["available_node_types"].items() if k != cfg["head_node_type"])


def test_kuberay_manifests_and_runtime_env():
    import ray
    from ray.runtime_env import RuntimeEnv

    cluster = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())}
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert cluster["RayCluster"]["apiVersion"] == job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    claim = cluster["PersistentVolumeClaim"]["metadata"]["name"]
    for spec in (cluster["RayCluster"]["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == ray.__version__  # the version the tests ran against
        assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
        pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for pod in pods:
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                      if "persistentVolumeClaim" in v]
            assert claims == [claim]  # one shared run directory for every pod
        for group in spec["workerGroupSpecs"]:
            assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    RuntimeEnv(**yaml.safe_load(job["spec"]["runtimeEnvYAML"]))
    RuntimeEnv(**yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text()))
    # The job's entrypoint is a valid run command line of a shipped config.
    words = job["spec"]["entrypoint"].split()
    assert words[:4] == ["python", "-m", "rbyr_ray.cli", "run"]
    load_config(ROOT / words[4], [w for w in words[5:] if "=" in w and not w.startswith("--")])


def test_device_follows_the_gpu_request_unless_pinned():
    from rbyr_ray.student.exam import exam_device
    from rbyr_ray.train.trainer import train_device

    cfg = ExperimentConfig()
    assert exam_device(cfg.exam) == "cpu" and train_device(cfg.train) == "cpu"
    gpu = load_config(None, ["exam.gpus_per_replica=1", "train.use_gpu=true"])
    assert exam_device(gpu.exam) == "cuda" and train_device(gpu.train) == "cuda"
    logical = load_config(None, ["exam.gpus_per_replica=1", "exam.device=cpu", "train.use_gpu=true",
                                 "train.device=cpu"])
    assert exam_device(logical.exam) == "cpu" and train_device(logical.train) == "cpu"


# ------------------------------------------------------------------ a 2-node cluster on this machine


@pytest.mark.slow
@pytest.mark.heavy
def test_exam_and_training_take_turns_on_logical_gpus(cluster, tmp_path):
    """exam -> train -> eval with every replica and worker holding a (logical) GPU: only 2 exist, so the stages
    can only run if each gives its GPUs back; the state API shows they never overlapped."""
    import ray

    from rbyr_ray.ray_utils import init_ray
    from rbyr_ray.student.exam import run_exam
    from rbyr_ray.train.trainer import train_round

    started = time.perf_counter()
    cfg = ExperimentConfig.model_validate({
        "ray": {"address": cluster.address},
        "exam": {"replicas": 2, "cpus_per_replica": 0.5, "gpus_per_replica": 1, "device": "cpu", "batch_size": 4},
        "train": {"num_workers": 2, "use_gpu": True, "device": "cpu", "cpus_per_worker": 1, "batch_size": 4,
                  "epochs": 1, "warmup_steps": 0, "threads_per_worker": 1,
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}})
    init_ray(cfg.ray)
    job = ray.get_runtime_context().get_job_id()
    data = generate(ArithConfig(n_train=8, n_test=4, min_steps=1, max_steps=2, seed=7))
    model = resolve_model_dir("smollm2-135m")

    exam = run_exam(data.train, model, cfg, answer_type="numeric", samples=2, greedy=False, max_new_tokens=16,
                    out_path=tmp_path / "exam.parquet", seed=0)
    assert len(exam.rows) == 16 and exam.n_failed == 0

    teacher = pd.DataFrame([{"id": r.id, "sample": s, "rationale": text, "accepted": True}
                            for r in data.train for s, text in enumerate([r.solution, f"So {r.solution}"])])
    mistakes = {r.id: [f"{r.solution[:-1]}1.\nAnswer: {r.answer}1"] for r in data.train}
    items = build_train_items(teacher, mistakes, {r.id: r for r in data.train}, load_tokenizer(model, "right"),
                              cfg.train, answer_type="numeric", seed=0)
    items.to_parquet(tmp_path / "train_data.parquet")
    trained = train_round(tmp_path / "train_data.parquet", model, tmp_path / "train", cfg, seed=0)
    assert trained.steps >= 1

    evaluation = run_exam(data.test, trained.model_dir, cfg, answer_type="numeric", samples=1, greedy=True,
                          max_new_tokens=16, out_path=tmp_path / "eval.parquet", seed=0)
    assert len(evaluation.rows) == 4 and evaluation.n_failed == 0

    all_spans = spans(ray.get_runtime_context().gcs_address, job)
    ray.shutdown()
    exam_spans, train_spans = assert_take_turns(all_spans)
    assert len(exam_spans) == 4 and len(train_spans) == 2  # two exams of 2 replicas, one group of 2 workers
    assert all(asks_gpu(s) for s in exam_spans + train_spans), [s.resources for s in exam_spans + train_spans]
    # 1 GPU per node: both nodes served each stage.
    assert len({s.node_id for s in exam_spans}) == 2 and len({s.node_id for s in train_spans}) == 2
    print(f"\nlogical-GPU stages: {time.perf_counter() - started:.0f} s")


@pytest.mark.slow
@pytest.mark.heavy
def test_two_node_experiment_spreads_exam_and_training(cluster, tmp_path):
    """A whole (tiny) experiment through rbyr_ray.run on the cluster: the exam replicas (spread by Ray Data) and the
    training workers (a STRICT_SPREAD placement group) run one per node, every teacher actor runs on the driver's
    node, where the local teacher server listens on loopback, and the run directory is complete."""
    import ray
    from ray.util.state import list_nodes

    started = time.perf_counter()
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"ray.address={cluster.address}", "ray.num_cpus=null",
        "rounds=1", "task.arith.n_train=8", "task.arith.n_test=8",
        "exam.round0=true", "exam.samples=2", "exam.max_new_tokens=16", "exam.batch_size=4",
        "exam.replicas=2", "exam.cpus_per_replica=0.5", "teacher.replicas=2",
        "eval.max_new_tokens=16", "eval.batch_size=4",
        "train.batch_size=4", "train.num_workers=2", "train.cpus_per_worker=1", "train.threads_per_worker=1",
        "train.placement_strategy=STRICT_SPREAD", "train.warmup_steps=0",
        "train.lora.r=4", "train.lora.alpha=8", "tracking.wandb=false"])
    run_dir = tmp_path / "run"
    summary = rbyr_ray.run(cfg, run_dir)
    assert [r["round"] for r in summary["rounds"]][-1] == 1

    address = ray.get_runtime_context().gcs_address
    job = ray.get_runtime_context().get_job_id()
    driver_node = ray.get_runtime_context().get_node_id()
    all_spans = spans(address, job)
    alive = [n for n in _state(list_nodes, address=address, detail=True) if n.state == "ALIVE"]
    ray.shutdown()
    nodes = {n.node_id for n in alive}
    assert len(nodes) == 2 and {"head_node", "worker_node"} <= {k for n in alive for k in n.resources_total}
    exam_spans, train_spans = assert_take_turns(all_spans)
    # round 0 exam, round 0 eval, round 1 eval: each with one replica per node.
    assert {s.node_id for s in exam_spans} == nodes and len(exam_spans) == 6
    assert {s.node_id for s in train_spans} == nodes and len(train_spans) == 2
    # The local teacher server listens on the driver's loopback: its clients must run on the driver's node.
    teacher_spans = [s for s in all_spans if "TeacherUDF" in s.cls]
    assert teacher_spans and {s.node_id for s in teacher_spans} == {driver_node}, teacher_spans

    for name in ["config.yaml", "summary.json", "metrics.jsonl", "manifest.json", "round_0/exam.parquet",
                 "round_0/eval.parquet", "round_1/teacher.parquet", "round_1/train_data.parquet",
                 "round_1/eval.parquet"]:
        assert (run_dir / name).is_file(), name
    model = run_dir / "round_1" / "model"
    assert (model / "config.json").is_file() and list(model.glob("*.safetensors"))
    print(f"\ntwo-node experiment: {time.perf_counter() - started:.0f} s")
