"""``ragqa finetune ... --accelerate-config FILE``: the launch config is checked before anything starts,
and a tiny SFT really trains as 2 CPU processes (DDP over gloo on loopback) with one adapter written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from finetune.distributed import launch_command, load_launch_config
from finetune.errors import ConfigError
from tests.conftest import DATA, ROOT, ragqa_cmd

CONFIGS = DATA / "accelerate"
QA = [
    ("What is the capital of France?", "Paris", "Paris is the capital of France."),
    ("What is the capital of Italy?", "Rome", "Rome is the capital of Italy."),
    ("What is the capital of Norway?", "Oslo", "Oslo is the capital of Norway."),
    ("What is the capital of Spain?", "Madrid", "Madrid is the capital of Spain."),
    ("What is the capital of Peru?", "Lima", "Lima is the capital of Peru."),
    ("What is the capital of Chile?", "Santiago", "Santiago is the capital of Chile."),
    ("What is the capital of Japan?", "Tokyo", "Tokyo is the capital of Japan."),
    ("What is the capital of Kenya?", "Nairobi", "Nairobi is the capital of Kenya."),
]


def write_train(path: Path) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a, "context": c}) + "\n" for q, a, c in QA))
    return path


# -- the launch config: checked up front, with what to do --------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("distributed_type: [MULTI_CPU\n", "not valid YAML"),
        ("- MULTI_CPU\n", "must hold a mapping"),
        ("distributed_type: MULTI_CPU\nnum_processes: 2\nnum_gpus_per_node: 3\n", "accelerate rejects"),
        ("distributed_type: NOT_A_TYPE\nnum_processes: 2\n", "accelerate rejects"),
        ("distributed_type: MULTI_CPU\n", "set num_processes"),
        ("distributed_type: MULTI_CPU\nnum_processes: 4\nnum_machines: 2\n", "mpirun_hostfile"),
        ("compute_environment: AMAZON_SAGEMAKER\ndistributed_type: DATA_PARALLEL\n", "LOCAL_MACHINE"),
    ],
)
def test_bad_launch_config_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "launch.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_launch_config(path)
    assert str(path) in str(info.value)


def test_gpu_configs_say_what_they_need_on_a_machine_without(tmp_path):
    import importlib.util

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA GPUs")
    with pytest.raises(ConfigError, match="needs CUDA GPUs.*ddp_cpu.yaml"):
        load_launch_config(CONFIGS / "ddp_gpu.yaml")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="pip install deepspeed"):
            load_launch_config(CONFIGS / "zero2.yaml")


@pytest.mark.parametrize("name", ["ddp_cpu", "ddp_gpu", "zero2"])
def test_shipped_configs_parse_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.num_processes == 2
    expected = {"ddp_cpu": "MULTI_CPU", "ddp_gpu": "MULTI_GPU", "zero2": "DEEPSPEED"}[name]
    assert cfg.distributed_type.value == expected
    if name == "zero2":
        assert cfg.deepspeed_config["zero_stage"] == 2


def test_cpu_processes_start_with_torchrun_others_with_accelerate_launch(tmp_path):
    cpu = load_launch_config(CONFIGS / "ddp_cpu.yaml")
    argv, env = launch_command(cpu, "api.cli", ["finetune", "sft"])
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert argv[6:] == ["api.cli", "finetune", "sft"]
    assert env["ACCELERATE_USE_CPU"] == "True"
    mpi = tmp_path / "mpi.yaml"
    mpi.write_text(
        "distributed_type: MULTI_CPU\nnum_processes: 2\nuse_cpu: true\nmpirun_config:\n  mpirun_hostfile: hosts\n"
    )
    argv, _ = launch_command(load_launch_config(mpi), "api.cli", ["finetune", "sft"])
    assert argv[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(mpi)]
    assert argv[5:] == ["-m", "api.cli", "finetune", "sft"]


def test_cli_refuses_a_missing_config_before_launching(tmp_path, home):
    train = write_train(tmp_path / "train.jsonl")
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(
        app,
        ["finetune", "sft", "--data", str(train), "-o", "x", "--accelerate-config", str(missing), "--json"],
    )
    assert result.exit_code == 2
    reply = json.loads(result.stdout)
    assert reply["ok"] is False
    assert f"accelerate config {missing} does not exist" in reply["error"]
    assert "data/accelerate/" in reply["error"]
    assert not (home / "finetune-runs").exists()


# -- a real launch: 2 CPU processes ------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_sft_trains_on_two_cpu_processes(tmp_path, home, tiny_llm):
    """8 examples at batch size 2: one process takes 4 steps per epoch, two DDP processes take 2."""
    train = write_train(tmp_path / "train.jsonl")
    env = {
        **os.environ,
        "RAGQA_HOME": str(home),
        "RAGQA_GENERATOR__MODEL": str(tiny_llm),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        *ragqa_cmd(),
        "finetune",
        "sft",
        "--data",
        str(train),
        "-o",
        "ddp",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--lr",
        "1e-2",
        "--logging-steps",
        "1",
        "--save-steps",
        "1000",
        "--max-length",
        "128",
        "--accelerate-config",
        str(CONFIGS / "ddp_cpu.yaml"),
        "--json",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # rank 0's summary only
    reply = json.loads(lines[0])
    assert reply["ok"] is True
    metrics = reply["metrics"]
    assert metrics["num_processes"] == 2
    assert metrics["train_examples"] == 8
    assert metrics["steps"] == 2  # the data was split over the 2 processes
    assert metrics["first_loss"] is not None and metrics["last_loss"] is not None

    adapters = home / "adapters"
    assert sorted(p.name for p in adapters.iterdir()) == ["ddp"]  # written once, no staging left behind
    meta = json.loads((adapters / "ddp" / "ragqa_adapter.json").read_text())
    assert meta["kind"] == "sft"
    assert meta["metrics"]["num_processes"] == 2
    assert (adapters / "ddp" / "adapter_model.safetensors").is_file()
