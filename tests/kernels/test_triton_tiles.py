"""simpo/kernels/triton_tiles.py (the CUDA path of tiled_logps) run by the Triton interpreter on CPU tensors, against
the plain full-logits path and the torch tiles: every head variant of tests/train/test_logps.py, forward and gradients,
fp32 and bf16; the kernel choice (argument, SIMPO_LOGPS_KERNEL); the tile choice by measurement."""

import os
import subprocess
import sys

import pytest
import torch
from bf16_cases import BF16, accelerate_bf16
from conftest import REPO, TINY_MODEL, tiny_rows
from host_reads import SimpoHostReads
from logps_cases import (
    FP32,
    HEADS,
    PLAIN,
    assert_fused_equals_plain,
    call,
    features,
    plain_head,
    run_head,
    tiny_llama,
)

from simpo.kernels import tiled_logps
from simpo.kernels.ledger import KernelLedger
from simpo.train.config import SimPOConfig
from simpo.train.logps import fused_token_logps
from simpo.train.trainer import SimPOTrainer

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def kernels():
    """simpo/kernels/triton_tiles.py, its kernels interpreted (conftest.py sets TRITON_INTERPRET=1 before triton
    loads)."""
    from simpo.kernels import triton_tiles as triton_logps

    assert triton_logps.INTERPRET and type(triton_logps._fold_kernel).__name__ == "InterpretedFunction"
    return triton_logps


def test_the_kernels_run_under_the_interpreter(kernels):
    import triton.language as tl

    assert type(tl.zeros).__name__ == "InterpretedFunction"  # triton itself was first imported in interpreter mode


def triton_head(tiles):
    def head(*args):
        logps, means = tiled_logps(*args, token_tile=tiles[0], vocab_tile=tiles[1], kernel="triton")
        assert logps.grad_fn.name() == "TritonLogProbsBackward"
        return logps, means

    return head


def torch_head(*args):
    return tiled_logps(*args, token_tile=7, vocab_tile=13, kernel="torch")


NAMES = ["loss", "logps", "logit means", "grad h", "grad W", "grad b"]


# (7, 13) divides neither N = 23 nor V = 53, and makes several token tiles (the weight gradient summed in fp32 across
# them); the default tiles hold all tokens (the weight gradient written by one GEMM) and the interpreter's 32-wide
# blocks split the vocabulary inside the kernels.
@pytest.mark.parametrize("tied,bias,scale,softcap", HEADS)
@pytest.mark.parametrize("tiles", [(7, 13), (None, None)])
def test_kernels_equal_full_logits_and_torch_tiles_in_fp32(tied, bias, scale, softcap, tiles):
    got = run_head(triton_head(tiles), torch.float32, tied, bias, scale, softcap)
    plain = run_head(plain_head, torch.float32, tied, bias, scale, softcap)
    tiles_path = run_head(torch_head, torch.float32, tied, bias, scale, softcap)
    assert len(got) == len(plain) == len(tiles_path)
    for name, a, b, c in zip(NAMES, got, plain, tiles_path):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **FP32, msg=f"{name} against the full logits")
        torch.testing.assert_close(a, c, **FP32, msg=f"{name} against the torch tiles")


@pytest.mark.parametrize("tied,bias,scale,softcap", HEADS)
def test_bf16_operands_agree_to_bf16_tolerance(tied, bias, scale, softcap):
    got = run_head(triton_head((7, 13)), torch.bfloat16, tied, bias, scale, softcap)
    plain = run_head(plain_head, torch.bfloat16, tied, bias, scale, softcap)
    tiles_path = run_head(torch_head, torch.bfloat16, tied, bias, scale, softcap)
    for name, a, b, c in zip(NAMES, got, plain, tiles_path):
        assert a.dtype == b.dtype, name  # fp32 log-probs, gradients in the operands' dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=5e-2, msg=f"{name} against the full logits")
        torch.testing.assert_close(a.float(), c.float(), rtol=3e-2, atol=5e-2, msg=f"{name} against the torch tiles")
    # the log-probs see the GEMM's output and fp32 arithmetic only, as in the torch tiles: equal to fp32 tolerance
    torch.testing.assert_close(got[1], tiles_path[1], **FP32)
    if not bias and scale == 1 and softcap is None:
        # In one tile, a bare head's logits are the plain path's own (a CPU GEMM rounds its bf16 products, as the
        # model's head does), and its logit gradient is rounded to bf16 once, to nearest even, as autograd rounds the
        # plain path's: the same gradients, to the bit.
        one_tile = run_head(triton_head((None, None)), torch.bfloat16, tied, bias, scale, softcap)
        for name, a, b in list(zip(NAMES, one_tile, plain))[3:]:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_no_scored_token_gives_empty_logps_and_zero_gradients():
    weight = torch.randn(53, 16, requires_grad=True)
    bias = torch.randn(53, requires_grad=True)
    hidden = torch.randn(0, 16, requires_grad=True)
    logps, means = tiled_logps(hidden, weight, bias, torch.zeros(0, dtype=torch.long), kernel="triton")
    assert logps.shape == means.shape == (0,) and logps.dtype == torch.float32
    logps.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros_like(bias))
    assert hidden.grad.shape == (0, 16)


def test_frozen_head_gets_no_weight_gradient_and_the_same_hidden_gradient():
    torch.manual_seed(0)
    weight, hidden, labels = torch.randn(53, 16), torch.randn(23, 16, requires_grad=True), torch.randint(0, 53, (23,))
    tiled_logps(hidden, weight, None, labels, kernel="triton")[0].sum().backward()
    frozen = hidden.grad.clone()
    hidden.grad = None
    tiled_logps(hidden, weight.requires_grad_(), None, labels, kernel="torch")[0].sum().backward()
    torch.testing.assert_close(frozen, hidden.grad, **FP32)


def test_kernel_choice_by_argument_and_environment(monkeypatch):
    args = torch.randn(5, 16, requires_grad=True), torch.randn(53, 16), None, torch.randint(0, 53, (5,))
    assert tiled_logps(*args)[0].grad_fn.name() == "TiledLogProbsBackward"  # auto: CPU tensors take torch
    monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "triton")
    assert tiled_logps(*args)[0].grad_fn.name() == "TritonLogProbsBackward"
    assert tiled_logps(*args, kernel="torch")[0].grad_fn.name() == "TiledLogProbsBackward"  # the argument wins
    monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "cuda")
    with pytest.raises(ValueError, match="SIMPO_LOGPS_KERNEL\\) is 'cuda'; use 'auto', 'triton' or 'torch'"):
        tiled_logps(*args)


def test_cpu_tensors_without_the_interpreter_are_refused_with_the_way_out(kernels, monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    args = torch.randn(5, 16), torch.randn(53, 16), None, torch.randint(0, 53, (5,))
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1 .* kernel='torch'"):
        tiled_logps(*args, kernel="triton")


@pytest.mark.slow
def test_tiles_are_chosen_by_timing_each_candidate_once_per_shape(kernels, monkeypatch):
    """What a GPU does on the first call for a shape, with a stand-in clock that favours the 4096-wide vocabulary
    tile: every candidate really runs (forward and backward), the fastest is kept and reused."""
    timed = []

    def clock(fn, warmup, rep):
        fn()
        timed.append(kernels.forward_stats.calls[-1])
        return 1.0 if timed[-1][1] == 4096 else 2.0

    forward_stats = kernels.forward_stats

    def recording_forward_stats(*args):
        recording_forward_stats.calls.append(args[-1])  # the tiles
        return forward_stats(*args)

    recording_forward_stats.calls = []
    monkeypatch.setattr(kernels, "forward_stats", recording_forward_stats)
    monkeypatch.setattr(kernels, "do_bench", clock)
    ledger = KernelLedger()  # the run's memory of the choice
    torch.manual_seed(0)
    hidden, weight, labels = torch.randn(6, 8), torch.randn(5000, 8) * 0.3, torch.randint(0, 5000, (6,))
    for _ in range(2):
        tiles = kernels.choose_tiles(hidden, weight, None, labels, 1.0, None, torch.float32, (None, None), True, ledger)
        assert tiles == (8, 4096)
    assert timed == [(8, 2048), (8, 4096), (8, 5000)]  # N = 6 rounds up to 8; V = 5000 caps wider tiles; once
    given = kernels.choose_tiles(hidden, weight, None, labels, 1.0, None, torch.float32, (3, None), True, ledger)
    assert given == (3, 4096)
    # and the chosen tile computes what the torch tiles do
    hidden.requires_grad_()
    weight.requires_grad_()
    got = [*tiled_logps(hidden, weight, None, labels, token_tile=8, vocab_tile=4096, kernel="triton")]
    got += torch.autograd.grad(got[0].sum(), (hidden, weight))
    want = [*tiled_logps(hidden, weight, None, labels, kernel="torch")]
    want += torch.autograd.grad(want[0].sum(), (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **FP32)


@pytest.mark.parametrize("tied", [False, True])
def test_a_tiny_llama_end_to_end(tied, monkeypatch):
    monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "triton")
    model = tiny_llama(tie_word_embeddings=tied)
    assert call(fused_token_logps, model, PLAIN(features()))[0].grad_fn.name() == "TritonLogProbsBackward"
    assert_fused_equals_plain(model)


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
def test_under_accelerates_bf16_autocast(weights, monkeypatch):
    """The paper configs' GPU precision: the head computes in bf16 under autocast, from fp32 weights (the weight's
    gradient summed in fp32 over bf16 products, then kept fp32) or bf16 ones."""
    monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "triton")
    model = accelerate_bf16(tiny_llama().to(weights))
    batch = PLAIN(features())
    assert call(fused_token_logps, model, batch)[0].grad_fn.name() == "TritonLogProbsBackward"
    assert_fused_equals_plain(model, batch, **BF16)


@pytest.mark.slow
def test_a_training_micro_step_on_it_does_not_wait_for_the_device(tmp_path, monkeypatch):
    """As tests/train/test_metrics.py checks for the torch tiles: no value read, no value-sized op, in simpo's code."""
    monkeypatch.setenv("SIMPO_LOGPS_KERNEL", "triton")
    tokenizer, rows = tiny_rows(6)
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=128, max_prompt_length=64)
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)
    batch = trainer.layout([trainer.train_dataset[i] for i in range(6)])
    trainer.compute_loss(trainer.model, batch)  # the first step checks the head once; that may read
    with SimpoHostReads() as mode:
        loss = trainer.compute_loss(trainer.model, batch)
        assert loss.grad_fn is not None
        loss.backward()
    assert mode.reads == []
    assert call(fused_token_logps, trainer.model, batch, trainer.layout)[0].grad_fn.name() == "TritonLogProbsBackward"


# Every autotuned block shape of both kernels, with bias and softcap on and off, compiled by Triton's own compiler to a
# cubin for an H100/H200 (sm_90): what a GPU would compile, checked here without one (triton bundles ptxas).
COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from simpo.kernels import triton_tiles as k

assert not k.INTERPRET
common = {"u_ptr": "*fp32", "stride": "i32", "b_ptr": "*bf16", "labels_ptr": "*i64", "v0": "i32", "n_rows": "i32",
          "n_cols": "i32", "scale": "fp32", "softcap": "fp32", "lse_ptr": "*fp32"}
kernels = [(k._fold_kernel, {"sum_ptr": "*fp32", "label_ptr": "*fp32"}, k.FOLD.configs, {}),
           (k._grad_kernel, {"g_ptr": "*fp32", "du_ptr": "*bf16"}, k.GRAD.configs, {"ROUND_BF16": False})]
compiled = 0
for fn, pointers, configs, flags in kernels:
    for config in configs:
        for on in (False, True):
            constexprs = {"HAS_BIAS": on, "HAS_SOFTCAP": on, **flags, **config.kwargs}
            signature = {**common, **pointers, **dict.fromkeys(constexprs, "constexpr")}
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                    target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})
            compiled += len(kernel.asm["cubin"]) > 0
print(compiled)
"""


@pytest.mark.slow
def test_the_kernels_compile_for_a_gpu():
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_SM90], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-1] == "14"  # 4 + 3 block shapes, each with and without bias and softcap


def test_the_first_call_per_shape_refuses_kernels_that_disagree_with_the_torch_tiles(kernels, monkeypatch):
    """On a GPU the tiles are timed at the first call per shape, and a few tokens recomputed by the torch tiles:
    kernels that misbehave on that GPU stop the run instead of training on wrong log-probs."""
    torch.manual_seed(0)
    hidden, weight, labels = torch.randn(6, 8), torch.randn(300, 8) * 0.3, torch.randint(0, 300, (6,))
    args = (hidden, weight, None, labels, 1.0, None, torch.float32, (8, 128))
    kernels.check_against_torch(*args)  # the real kernels agree
    forward_stats = kernels.forward_stats
    monkeypatch.setattr(kernels, "forward_stats", lambda *a: (forward_stats(*a)[0] + 0.5, *forward_stats(*a)[1:]))
    with pytest.raises(RuntimeError, match=r"differ by 0.5 from the torch tiles'.*SIMPO_LOGPS_KERNEL=torch"):
        kernels.check_against_torch(*args)
