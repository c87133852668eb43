"""Training on several processes or GPUs under HF accelerate: the launch config, the launch command, ranks.

``ragqa finetune sft|reward|dpo|rlhf|rag ... --accelerate-config FILE`` runs the same trainer in every
process of an accelerate launch. The trainers need no change for it: the transformers/TRL ``Trainer``
reads the process group from the launcher's environment (``RANK``, ``WORLD_SIZE``...) and wraps the
model in DDP (or DeepSpeed). What ragqa itself writes, the adapter and its metadata, is written once,
by rank 0 (:func:`is_main_process`); the other ranks wait for it (:func:`wait_for_everyone`).

How the processes start follows accelerate's own rules (``accelerate launch --config_file FILE``),
with one gap filled: accelerate starts several CPU processes only through MPI (``mpirun_config``
with a hostfile). A ``MULTI_CPU`` config on one machine without one is started with
``torch.distributed.run --standalone`` instead, the launcher accelerate itself uses for GPUs,
with the same environment accelerate would set (CPU mode, mixed precision, threads per process).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import ConfigError

#: Example configs shipped with ragqa (the README lists them).
EXAMPLES_HINT = "see data/accelerate/ for examples (ddp_cpu.yaml, ddp_gpu.yaml, zero2.yaml)"
#: accelerate distributed types that run on CUDA GPUs.
GPU_TYPES = frozenset({"MULTI_GPU", "DEEPSPEED", "FSDP", "MEGATRON_LM"})
#: accelerate distributed types ragqa launches (the others, TPU/XLA and vendor devices, are untested here).
SUPPORTED_TYPES = frozenset({"NO", "MULTI_CPU", *GPU_TYPES})

#: Environment variables that name a process's rank / the number of processes, in the order accelerate reads them
#: (torchrun and accelerate set RANK and WORLD_SIZE; MPI launchers set their own).
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def process_rank() -> int:
    """This process's rank in the launch (0 when not launched by accelerate, torchrun or MPI)."""
    return _env_int(RANK_VARS, 0)


def world_size() -> int:
    """How many processes train together (1 when not launched by accelerate, torchrun or MPI)."""
    return _env_int(WORLD_SIZE_VARS, 1)


def local_world_size() -> int:
    """How many of them run on this machine."""
    return _env_int(LOCAL_SIZE_VARS, world_size())


def is_main_process() -> bool:
    """True on rank 0, the one process that writes the adapter and prints the summary."""
    return process_rank() == 0


def wait_for_everyone() -> None:
    """A barrier across the launch's processes once the trainer has joined them (a no-op in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class LaunchConfig:
    """An accelerate config file, read and checked before any process starts."""

    path: Path
    distributed_type: str  #: accelerate's DistributedType value: NO, MULTI_CPU, MULTI_GPU, DEEPSPEED, FSDP...
    num_processes: int  #: processes over all machines
    num_machines: int
    mixed_precision: str
    mpirun_hostfile: str | None  #: MULTI_CPU over MPI (``mpirun_config.mpirun_hostfile``)

    @property
    def uses_torchrun(self) -> bool:
        """A ``MULTI_CPU`` config on one machine without MPI: started by :func:`launch_command` with torchrun."""
        return self.distributed_type == "MULTI_CPU" and self.mpirun_hostfile is None


def load_launch_config(path: Path) -> LaunchConfig:
    """Read an accelerate config file (YAML or JSON) with accelerate's own loader and check it can run here.

    Raises :class:`ConfigError` with what to do: a missing or unreadable file, a file accelerate rejects,
    a cloud (SageMaker) config, DeepSpeed not installed, or a GPU config on a machine without CUDA.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"accelerate config {path} {what}; give a YAML file made by `accelerate config`, {EXAMPLES_HINT}"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read accelerate config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"accelerate config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"accelerate config {path} must hold a mapping of settings; {EXAMPLES_HINT}")
    if raw.get("compute_environment", "LOCAL_MACHINE") != "LOCAL_MACHINE":
        raise ConfigError(
            f"accelerate config {path}: compute_environment {raw['compute_environment']!r} is not supported; "
            "ragqa launches on your own machines (LOCAL_MACHINE)"
        )
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        cfg: Any = load_config_from_file(str(path))
    except (ValueError, TypeError, KeyError) as exc:  # unknown keys, a bad distributed_type, a missing field
        raise ConfigError(f"accelerate rejects config {path}: {exc}") from exc
    launch = LaunchConfig(
        path=path,
        distributed_type=_value(cfg.distributed_type),
        num_processes=int(cfg.num_processes),
        num_machines=int(cfg.num_machines or 1),
        mixed_precision=str(_value(cfg.mixed_precision) or "no"),
        mpirun_hostfile=(cfg.mpirun_config or {}).get("mpirun_hostfile"),
    )
    _check_runnable(launch)
    return launch


def _value(enum_or_str: Any) -> Any:
    return getattr(enum_or_str, "value", enum_or_str)


def _check_runnable(launch: LaunchConfig) -> None:
    where = f"accelerate config {launch.path}"
    if launch.distributed_type not in SUPPORTED_TYPES:
        raise ConfigError(
            f"{where}: distributed_type {launch.distributed_type} is not supported by ragqa; "
            f"use one of {', '.join(sorted(SUPPORTED_TYPES))}"
        )
    if launch.num_processes < 1:
        raise ConfigError(f"{where}: set num_processes (processes over all machines, at least 1)")
    if launch.uses_torchrun and launch.num_machines > 1:
        raise ConfigError(
            f"{where}: MULTI_CPU over {launch.num_machines} machines needs MPI; set mpirun_config.mpirun_hostfile"
        )
    if launch.distributed_type == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{where} uses DeepSpeed, which is not installed: pip install deepspeed (it needs CUDA GPUs)")
    if launch.distributed_type in GPU_TYPES:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"{where} ({launch.distributed_type}) needs CUDA GPUs and this machine has none; "
                "train on several CPU processes with data/accelerate/ddp_cpu.yaml"
            )


def launch_command(launch: LaunchConfig, module: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``python -m module *args`` in every process of ``launch``."""
    env = dict(os.environ)
    if not launch.uses_torchrun:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch.path)]
        return [*argv, "-m", module, *args], env
    # What accelerate sets for CPU processes (accelerate.utils.launch.prepare_simple_launcher_cmd_env).
    env["ACCELERATE_USE_CPU"] = "True"
    env["ACCELERATE_MIXED_PRECISION"] = launch.mixed_precision
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.num_processes)))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={launch.num_processes}"]
    return [*argv, "-m", module, *args], env
