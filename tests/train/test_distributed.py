"""Distributed launches on CPU, for real: `accelerate launch` of the tiny config in 2 processes under DDP and DeepSpeed
ZeRO-3, and the refusal of FSDP on CPU. Each rank reports what it ran through tests/helpers/dist_train.py's probe.
Elastic resume (docs/elastic-resume.md): a run stopped and relaunched on 2 -> 1 -> 2 processes under DDP and ZeRO-3,
against the uninterrupted 2-process runs of the module fixtures (3 launches each, about 2.5-3 minutes each on 2 busy
cores).

Slow (each launch starts 2 Python processes; the first ZeRO-3 launch on a machine also compiles a small DeepSpeed
extension): about 2-5 minutes in all on 2 cores. They are part of the CI run on purpose: nothing else checks the
accelerate configs.
"""

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import REPO, TINY_MODEL
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from simpo.run.checkpoints import last_complete_checkpoint
from simpo.run.launch import check_distributed_setup

pytestmark = pytest.mark.slow  # every test here launches processes (gloo, DeepSpeed): CI runs them

TINY_CONFIG = "training_configs/tiny-simpo-cpu.yaml"
TINY_SFT_CONFIG = "training_configs/tiny-sft-cpu.yaml"
# 4 optimizer steps of 2 x 16 pairs, nothing else: no evaluation, checkpoint or logger.
SHORT_RUN = [
    "--max_steps=4",
    "--eval_strategy=no",
    "--eval_on_start=false",
    "--do_eval=false",
    "--report_to=none",
    "--save_strategy=no",
    "--logging_steps=1",
]
TIMEOUT_S = 900  # generous: the machine may be busy, and the first ZeRO-3 launch compiles


def launch_command(
    config: str,
    probe,
    out,
    *launch_args: str,
    train_args: tuple = (),
    port: int = 0,
    recipe: tuple = (TINY_CONFIG,),
    script: str = "tests/helpers/dist_train.py",
) -> list[str]:
    """accelerate launch tests/helpers/dist_train.py (or `script`, which takes its arguments) on the tiny config
    (recipe: ("sft", TINY_SFT_CONFIG) for the SFT recipe; port 0: a free one, other runs may share the machine)."""
    overridden = {arg.split("=")[0] for arg in train_args}  # a key given twice is refused
    short_run = [arg for arg in SHORT_RUN if arg.split("=")[0] not in overridden]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config,
        "--main_process_port",
        str(port),
        *launch_args,
        script,
        str(probe),
        *recipe,
        f"--output_dir={out}",
        *short_run,
        *train_args,
    ]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch(
    tmp_path,
    config: str,
    *launch_args: str,
    train_args: tuple = (),
    recipe: tuple = (TINY_CONFIG,),
    probe_name: str = "probe",
    env: dict | None = None,
    script: str = "tests/helpers/dist_train.py",
) -> SimpleNamespace:
    """Launch and wait; returns the process, the probe records and dirs."""
    probe, out = tmp_path / probe_name, tmp_path / "out"
    cmd = launch_command(config, probe, out, *launch_args, train_args=train_args, recipe=recipe, script=script)
    proc = subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=TIMEOUT_S)
    return probed(proc.returncode, proc.stdout + proc.stderr, probe, out)


def probed(returncode: int, output: str, probe, out) -> SimpleNamespace:
    records = sorted((json.loads(p.read_text()) for p in probe.glob("rank*.json")), key=lambda r: r["rank"])
    params = [load_file(probe / f"rank{r['rank']}.safetensors") for r in records]
    return SimpleNamespace(
        proc=SimpleNamespace(returncode=returncode), output=output, records=records, params=params, out=out
    )


def finished(run) -> SimpleNamespace:
    assert run.proc.returncode == 0, run.output[-5000:]
    return run


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return finished(launch(tmp_path_factory.mktemp("ddp"), "accelerate_configs/ddp_cpu.yaml"))


@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    return finished(launch(tmp_path_factory.mktemp("zero3"), "accelerate_configs/deepspeed_zero3_cpu.yaml"))


def assert_same_params(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **(tolerance or {"rtol": 0, "atol": 0}), msg=name)


def assert_really_distributed(run, wrapper: str, batches_per_rank: int = 19) -> None:
    assert [r["rank"] for r in run.records] == [0, 1], run.output[-5000:]
    for record in run.records:
        assert record["world_size"] == 2 and record["backend"] == "gloo"
        assert record["wrapped_type"] == wrapper
        assert record["global_step"] == 4
        # Each rank iterates its half of the data: 600 pairs / 16 per batch = 38 batches, 19 per rank.
        assert record["batches_per_epoch"] == batches_per_rank
    rank0, rank1 = run.params
    assert_same_params(rank0, rank1)  # replicas in sync, bit for bit
    untrained = dict(AutoModelForCausalLM.from_pretrained(TINY_MODEL).named_parameters())
    assert not torch.equal(rank0["model.norm.weight"], untrained["model.norm.weight"])  # and they trained


def assert_saved_model_is(run, params: dict) -> None:
    saved = dict(AutoModelForCausalLM.from_pretrained(run.out).named_parameters())
    assert {name: p.dtype for name, p in saved.items()} == {name: torch.float32 for name in params}
    assert_same_params({name: p.detach() for name, p in saved.items()}, params)


def test_ddp_trains_two_gloo_processes_in_sync(ddp):
    assert_really_distributed(ddp, "torch.nn.parallel.distributed.DistributedDataParallel")
    assert "Using 600 rows of data/tiny-prefs [train]" in ddp.output  # what a refused launch must not get to
    assert_saved_model_is(ddp, ddp.params[0])


def test_zero3_partitions_parameters_and_saves_them_whole(zero3):
    assert_really_distributed(zero3, "deepspeed.runtime.engine.DeepSpeedEngine")
    for record in zero3.records:  # each rank stores half of each parameter, not all of it
        shard = record["zero3_shard"]
        assert shard["full_numel"] == 653 * 64  # the (tied) embedding, the largest parameter
        assert shard["local_numel"] == shard["full_numel"] // 2
    # zero3_save_16bit_model gathers the shards on save: output_dir holds the full fp32 weights (the "16bit" in the
    # name is DeepSpeed's; the weights keep their training dtype), equal to what the ranks hold.
    assert_saved_model_is(zero3, zero3.params[0])


def test_zero3_trains_the_same_model_as_ddp(ddp, zero3):
    """Same data, seed and steps: sharding changes where the numbers live, not what they are (up to summation
    order)."""
    assert_same_params(zero3.params[0], ddp.params[0], rtol=1e-4, atol=1e-6)


def pairs_per_step(*runs) -> dict[int, list[str]]:
    """The pairs (dist_train.py's ids) each optimizer step trained on, over all ranks of the runs."""
    steps = {}
    for run in runs:
        for record in run.records:
            for step, pairs in record["pairs"].items():
                steps.setdefault(int(step), []).extend(pairs)
    return {step: sorted(pairs) for step, pairs in sorted(steps.items())}


def stop_and_resume_on(tmp_path, config: str, legs: tuple) -> list[SimpleNamespace]:
    """One run in output_dir, launched once per (processes, step it stops at, None: to the end) in legs; each stop is
    the SIGTERM path (checkpoint, exit 143), i.e. a preemption, and each relaunch is the same command."""
    runs = []
    for n, (processes, stop_at) in enumerate(legs):
        runs.append(
            launch(
                tmp_path,
                config,
                "--num_processes",
                str(processes),
                probe_name=f"probe{n}",
                train_args=("--save_strategy=steps", "--save_steps=100"),
                env={"PROBE_STOP_AT_STEP": str(stop_at or "")},
            )
        )
        assert [r["global_step"] for r in runs[-1].records] == [stop_at or 4] * processes, runs[-1].output[-5000:]
        assert runs[-1].proc.returncode == (0 if stop_at is None else 1), runs[-1].output[-5000:]
    return runs


# 2 processes to step 1, 1 process to step 3, 2 processes to step 4: both directions, in 3 launches.
ELASTIC_LEGS = ((2, 1), (1, 3), (2, None))


def assert_resumed_elastically(runs, reference, written_by: str) -> None:
    """Each leg kept the global batch of 32 (accumulation 1 on 2 processes, 2 on 1), each optimizer step trained on
    the pairs the uninterrupted 2-process run trained on in that step, and the summary said what was resumed."""
    assert [r["gradient_accumulation_steps"] for run in runs for r in run.records] == [1, 1, 2, 1, 1]
    assert "gradient_accumulation_steps becomes 2 to keep the global batch" in runs[1].output
    assert "resumed from checkpoint-1 written by 2 processes, now 1" in runs[1].output
    assert "resumed from checkpoint-3 written by 1 processes, now 2" in runs[2].output
    assert f"distributed     {written_by}" in runs[2].output
    expected = pairs_per_step(reference)
    assert list(expected) == [1, 2, 3, 4] and all(len(pairs) == 32 for pairs in expected.values())
    assert pairs_per_step(*runs) == expected


def test_ddp_resumes_on_another_process_count_with_the_same_batches_and_weights(tmp_path, ddp):
    """2 -> 1 -> 2 processes ends where the uninterrupted 2-process run ends. The weights are compared with rtol 1e-5,
    atol 1e-6 (fp32), not bit for bit: one process sums the two micro-batches' gradients, DDP all-reduces the two
    processes' gradients, in another order (here they came out equal to the bit)."""
    runs = stop_and_resume_on(tmp_path, "accelerate_configs/ddp_cpu.yaml", ELASTIC_LEGS)
    assert_resumed_elastically(runs, ddp, "MULTI_CPU, 2 process(es)")
    assert_same_params(runs[-1].params[0], ddp.params[0], rtol=1e-5, atol=1e-6)
    assert_saved_model_is(runs[-1], runs[-1].params[0])


def test_zero3_resumes_on_another_process_count_through_a_universal_checkpoint(tmp_path, zero3):
    """2 -> 1 -> 2 processes under ZeRO-3: each relaunch converts the ZeRO shards (partitioned per process, which
    DeepSpeed refuses on another count) into DeepSpeed's universal checkpoint beside them, and ends where the
    uninterrupted 2-process run ends: rtol 1e-4, atol 1e-6, the ZeRO-3-vs-DDP tolerance above (the reduce-scatter
    and one process's accumulation add the gradients in another fp32 order)."""
    runs = stop_and_resume_on(tmp_path, "accelerate_configs/deepspeed_zero3_cpu.yaml", ELASTIC_LEGS)
    assert_resumed_elastically(runs, zero3, "DEEPSPEED, 2 process(es)")
    for step, leg in ((1, runs[1]), (3, runs[2])):
        checkpoint = runs[0].out / f"checkpoint-{step}"
        assert f"Converting {checkpoint / f'global_step{step}'} to DeepSpeed's universal checkpoint" in leg.output
        assert (checkpoint / "latest_universal").read_text() == f"global_step{step}_universal"
        assert (checkpoint / f"global_step{step}_universal" / "zero").is_dir()  # kept beside the ZeRO shards
    assert_same_params(runs[-1].params[0], zero3.params[0], rtol=1e-4, atol=1e-6)
    assert_saved_model_is(runs[-1], runs[-1].params[0])


def test_ddp_in_bf16_mixed_precision_as_the_gpu_configs_run(tmp_path):
    """accelerate's bf16 autocast with fp32 outputs, in 2 gloo processes: where the first GPU run crashed at step 1."""
    run = finished(
        launch(tmp_path, "accelerate_configs/ddp_cpu.yaml", "--mixed_precision", "bf16", train_args=("--bf16=true",))
    )
    assert_really_distributed(run, "torch.nn.parallel.distributed.DistributedDataParallel")


def test_zero3_exits_cleanly_five_times_in_a_row(tmp_path):
    """Every rank exits 0 after training and saving, every time: a rank aborting at exit (SIGABRT) would stop a
    script that chains steps after training. The cause was a gloo worker thread still freeing a finished
    collective's tensors while Python shut down; the recipe now destroys the process group before it returns."""
    for attempt in range(5):
        run = launch(tmp_path / str(attempt), "accelerate_configs/deepspeed_zero3_cpu.yaml")
        assert run.proc.returncode == 0, f"attempt {attempt}: " + run.output[-3000:]
        assert "terminate called" not in run.output
        assert (run.out / "model.safetensors").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_localhost_split_the_data_and_save_whole_weights(tmp_path):
    """The multi-node recipe of the README, as 2 machines of 1 process each on localhost (ZeRO-3, gloo)."""
    probe, out, port = tmp_path / "probe", tmp_path / "out", free_port()
    machines = [
        subprocess.Popen(
            launch_command(
                "accelerate_configs/deepspeed_zero3_cpu.yaml",
                probe,
                out,
                "--num_machines",
                "2",
                "--num_processes",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                port=port,
            ),
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [machine.communicate(timeout=TIMEOUT_S)[0] for machine in machines]
    for machine, output in zip(machines, outputs):
        assert machine.returncode == 0, output[-5000:]
    run = probed(0, "\n".join(outputs), probe, out)
    assert_really_distributed(run, "deepspeed.runtime.engine.DeepSpeedEngine")  # each rank read half the batches
    for record in run.records:
        assert record["zero3_shard"]["local_numel"] == record["zero3_shard"]["full_numel"] // 2
    assert_saved_model_is(run, run.params[0])  # gathered from both machines' shards into one whole checkpoint


@pytest.mark.parametrize(
    ("config", "wrapper"),
    [
        ("accelerate_configs/ddp_cpu.yaml", "torch.nn.parallel.distributed.DistributedDataParallel"),
        ("accelerate_configs/deepspeed_zero3_cpu.yaml", "deepspeed.runtime.engine.DeepSpeedEngine"),
    ],
)
def test_sft_trains_two_gloo_processes_in_sync(tmp_path, config, wrapper):
    """The SFT recipe (TRL's SFTTrainer) under the SimPO recipe's launchers: 433 conversations / 16 per batch = 28
    batches, 14 per rank; under ZeRO-3 each rank holds half of each parameter and the saved model is whole."""
    run = finished(launch(tmp_path, config, recipe=("sft", TINY_SFT_CONFIG)))
    assert_really_distributed(run, wrapper, batches_per_rank=14)
    assert_saved_model_is(run, run.params[0])
    assert "terminate called" not in run.output
    if "zero3" in config:
        assert "distributed     DEEPSPEED, 2 process(es)" in run.output
        for record in run.records:
            assert record["zero3_shard"]["local_numel"] == record["zero3_shard"]["full_numel"] // 2
    else:
        assert "distributed     MULTI_CPU, 2 process(es)" in run.output


def test_fsdp_on_cpu_is_refused_not_degraded_to_ddp(tmp_path):
    # The shipped FSDP config, on CPU (the training config says use_cpu), in 2 processes.
    run = launch(tmp_path, "accelerate_configs/fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no")
    assert run.proc.returncode != 0
    assert "FSDP was requested (accelerate config, FSDP_VERSION=2) but accelerate set up MULTI_CPU" in run.output
    assert "deepspeed_zero3_cpu.yaml" in run.output
    assert run.records == []  # refused before any training step
    assert "Using 600 rows" not in run.output  # and at start-up, before the data (or the model) is loaded


def test_processes_that_would_train_alone_are_refused(tmp_path):
    # Without use_cpu on a machine without GPUs, each process sets up a 1-process run of its own.
    run = launch(tmp_path, "accelerate_configs/ddp_cpu.yaml", train_args=("--use_cpu=false",))
    assert run.proc.returncode != 0
    assert "2 processes were launched (WORLD_SIZE=2) but accelerate set up NO on CPU with 1 process(es)" in run.output
    assert "set use_cpu: true" in run.output
    assert run.records == [] and "Using 600 rows" not in run.output


# The check itself, without launching anything.
def fake(distributed_type, num_processes=2):
    return SimpleNamespace(distributed_type=distributed_type, num_processes=num_processes)


@pytest.fixture(autouse=True)
def clean_launch_env(monkeypatch):
    for name in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_CPU", "FSDP_VERSION"):
        monkeypatch.delenv(name, raising=False)


def test_check_passes_when_fsdp_was_not_requested(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.DEEPSPEED):
        check_distributed_setup(fake(kind), SimpleNamespace(fsdp=[], use_cpu=True))


def test_check_passes_when_fsdp_is_what_accelerate_set_up(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_distributed_setup(fake(DistributedType.FSDP), SimpleNamespace(fsdp=[], use_cpu=False))


def test_check_refuses_fsdp_degraded_on_cpu(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(RuntimeError, match="accelerate set up MULTI_CPU on CPU with 2 process") as error:
        check_distributed_setup(fake(DistributedType.MULTI_CPU), SimpleNamespace(fsdp=[], use_cpu=True))
    assert "FSDP_VERSION=2" in str(error.value) and "deepspeed_zero3_cpu.yaml" in str(error.value)


def test_check_refuses_fsdp_training_argument_without_a_distributed_launch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"fsdp=\['full_shard'\].*NO on GPU.*accelerate launch --config_file"):
        check_distributed_setup(fake(DistributedType.NO, 1), SimpleNamespace(fsdp=["full_shard"], use_cpu=False))


def test_check_refuses_launched_processes_that_each_run_alone(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_distributed_setup(fake(DistributedType.MULTI_CPU, 4), SimpleNamespace(fsdp=[], use_cpu=True))
    with pytest.raises(RuntimeError, match=r"4 processes were launched \(WORLD_SIZE=4\).*NO on CPU.*use_cpu: true"):
        check_distributed_setup(fake(DistributedType.NO, 1), SimpleNamespace(fsdp=[], use_cpu=False))


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_finished_process_exits_with_the_recipes_code_and_its_output_flushed(world_size):
    """exit_process: a distributed process leaves without the interpreter teardown (where finished gloo work freed
    by a worker thread aborts it), its printed output and logs flushed; a single one exits as usual."""
    code = (
        "import logging, sys; from simpo.run.commands import exit_process; print('all written');"
        " logging.basicConfig(stream=sys.stderr); logging.getLogger('x').warning('logged'); exit_process(7)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**ENV, "WORLD_SIZE": world_size},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 7 and run.stdout == "all written\n" and "logged" in run.stderr


@pytest.mark.parametrize("config", ["accelerate_configs/ddp_cpu.yaml", "accelerate_configs/deepspeed_zero3_cpu.yaml"])
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path, config):
    """A signal reaches the processes at different moments (here: rank 1 alone, at step 2): they agree to stop after
    the same step, save one complete checkpoint together, and the relaunch resumes it to the end."""
    stopped = launch(
        tmp_path,
        config,
        train_args=("--save_strategy=steps", "--save_steps=100"),
        env={"PROBE_STOP_AT_STEP": "2", "PROBE_STOP_RANK": "1"},
    )
    assert [r["global_step"] for r in stopped.records] == [2, 2], stopped.output[-5000:]
    assert "Another process received SIGTERM: stopping after this step." in stopped.output
    assert last_complete_checkpoint(str(stopped.out)) == str(stopped.out / "checkpoint-2")
    resumed = finished(launch(tmp_path, config, probe_name="probe-resumed"))
    assert [r["global_step"] for r in resumed.records] == [4, 4]
