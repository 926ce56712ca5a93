"""simpo/kernels/torch_tiles.py against the plain path (full logits -> log_softmax): log-probs, logit means, the SimPO
loss and the gradients, on hand-made tensors (every head variant, tiles that do not divide N or V) and end to end on
tiny random transformers models (Llama, Gemma 2 with its softcap, Cohere's and Granite's logit scales, PEFT, gradient
checkpointing, autocast, prefix sharing)."""

from types import SimpleNamespace

import pytest
import torch
from logps_cases import (
    FP32,
    HEADS,
    PLAIN,
    SMALL,
    H,
    V,
    assert_fused_equals_plain,
    call,
    features,
    plain_head,
    run_head,
    simpo_objective,
    tiny_llama,
)
from peft import LoraConfig, get_peft_model
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
)

import simpo.train.logps
from simpo.kernels import tiled_logps
from simpo.train.config import SimPOConfig
from simpo.train.layouts.shared_prefix import SharedPrefixLayout
from simpo.train.logps import fused_token_logps, plain_token_logps
from simpo.train.metrics import FiniteLossGuard
from simpo.train.trainer import SimPOTrainer


@pytest.mark.parametrize("tied,bias,scale,softcap", HEADS)
@pytest.mark.parametrize("tiles", [(7, 13), (None, None)])  # None: the default tiles
def test_tiles_equal_full_logits_in_fp32(tied, bias, scale, softcap, tiles):
    def fused(*args):
        return tiled_logps(*args, token_tile=tiles[0], vocab_tile=tiles[1])

    expected = run_head(plain_head, torch.float32, tied, bias, scale, softcap)
    got = run_head(fused, torch.float32, tied, bias, scale, softcap)
    for name, a, b in zip(["loss", "logps", "logit means", "grad h", "grad W", "grad b"], got, expected):
        torch.testing.assert_close(a, b, **FP32, msg=name)


@pytest.mark.parametrize("tied,bias,scale,softcap", HEADS)
def test_bf16_inputs_agree_to_bf16_tolerance_and_round_logits_as_the_model_does(tied, bias, scale, softcap):
    def fused(*args):
        return tiled_logps(*args, token_tile=7, vocab_tile=13)

    plain = run_head(plain_head, torch.bfloat16, tied, bias, scale, softcap)
    got = run_head(fused, torch.bfloat16, tied, bias, scale, softcap)
    for name, a, b in zip(["loss", "logps", "logit means", "grad h", "grad W", "grad b"], got, plain):
        assert a.dtype == b.dtype, name  # fp32 log-probs, gradients in the inputs' dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=5e-2, msg=name)
    if not bias and scale == 1 and softcap is None:
        # A CPU GEMM on bf16 operands rounds its output to bf16, as the model's own head does; everything after is
        # fp32 in both paths, so a bare head's log-probs are the plain path's own, not merely close to them.
        torch.testing.assert_close(got[1], plain[1], **FP32)


def test_no_scored_token_gives_empty_logps_and_zero_gradients():
    weight = torch.randn(V, H, requires_grad=True)
    hidden = torch.randn(0, H, requires_grad=True)
    logps, means = tiled_logps(hidden, weight, None, torch.zeros(0, dtype=torch.long))
    assert logps.shape == means.shape == (0,) and logps.dtype == torch.float32
    simpo_objective(logps, torch.zeros(0, dtype=torch.long), 4).backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and hidden.grad.shape == (0, H)


# End to end: fused_token_logps against plain_token_logps on a model, for a layout's batch.


@pytest.mark.parametrize("tied", [False, True])
def test_llama(tied):
    assert_fused_equals_plain(tiny_llama(tie_word_embeddings=tied))


def test_gemma2_with_its_final_logit_softcapping():
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(**SMALL, final_logit_softcapping=2.0))
    assert model.config.final_logit_softcapping == 2.0
    assert_fused_equals_plain(model)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CohereForCausalLM(CohereConfig(**SMALL, logit_scale=0.5, eos_token_id=1)),  # logits * logit_scale
        lambda: GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=4.0)),  # logits / logits_scaling
    ],
)
def test_models_that_scale_their_logits(make):
    torch.manual_seed(0)
    assert_fused_equals_plain(make())


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing(use_reentrant):
    model = tiny_llama()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.enable_input_require_grads()
    model.train()
    assert_fused_equals_plain(model)


def test_peft_lora_model():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # zero at init: make the adapters matter
            torch.nn.init.normal_(param, std=0.1)
    assert_fused_equals_plain(model)


def test_peft_lm_head_in_modules_to_save():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    torch.nn.init.normal_(model.base_model.model.lm_head.modules_to_save["default"].weight)  # differs from original
    assert_fused_equals_plain(model)


def test_peft_lora_on_the_lm_head_is_refused_not_ignored():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(NotImplementedError, match="LM head carries the adapter"):
        call(fused_token_logps, model, PLAIN(features()))


def test_a_head_transform_it_does_not_know_is_refused(monkeypatch):
    monkeypatch.setattr(simpo.train.logps, "head_transform", lambda config: (1.0, None))
    torch.manual_seed(0)
    model = GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=4.0))
    with pytest.raises(NotImplementedError, match="does something this path does not know"):
        call(fused_token_logps, model, PLAIN(features()))


def test_bf16_model_and_cpu_autocast():
    model = tiny_llama().to(torch.bfloat16)
    assert_fused_equals_plain(model, rtol=3e-2, atol=5e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_fused_equals_plain(tiny_llama(), rtol=3e-2, atol=5e-2)


@pytest.mark.parametrize("padding_free", [False, True])
def test_prefix_shared_batch(padding_free):
    model = tiny_llama(attn_implementation="sdpa")
    layout = SharedPrefixLayout(pad_token_id=0, padding_free=padding_free, config=model.config)
    assert_fused_equals_plain(model, layout=layout)


def test_trainer_loss_and_metrics_are_the_same_on_either_path():
    assert SimPOConfig(output_dir="unused").fused_logps is True  # the default
    model, batch = tiny_llama(), PLAIN(features())
    args = SimpleNamespace(beta=2.0, gamma=1.0, loss_type="sigmoid", label_smoothing=0.0, sft_weight=0.3)
    (loss, metrics), (plain_loss, plain_metrics) = (
        SimPOTrainer.batch_loss_and_metrics(
            SimpleNamespace(
                args=args,
                layout=PLAIN,
                token_logps=fn,
                loss_guard=FiniteLossGuard(),
                state=SimpleNamespace(global_step=0),
            ),
            model,
            batch,
        )
        for fn in (fused_token_logps, plain_token_logps)
    )
    torch.testing.assert_close(loss, plain_loss, **FP32)
    assert metrics.keys() == plain_metrics.keys()
    for name in metrics:
        torch.testing.assert_close(metrics[name], plain_metrics[name], **FP32, msg=name)


def test_only_flat_fsdp1_heads_fall_back_to_the_plain_path(monkeypatch):
    zero3 = torch.empty(0)
    zero3.ds_id = 7  # a ZeRO-3 parameter outside its forward: the head's hooks gather it, no fallback
    flat_view = torch.empty(40)  # FSDP1's 1-D view of a shard
    assert [simpo.train.logps.fsdp1_flat(w) for w in (torch.empty(V, H), zero3, flat_view)] == [False, False, True]
    monkeypatch.setattr(simpo.train.logps, "fsdp1_flat", lambda weight: True)
    model, batch = tiny_llama(), PLAIN(features())
    logps, _ = call(fused_token_logps, model, batch)
    assert logps.grad_fn.name() != "TiledLogProbsBackward"
    torch.testing.assert_close(logps, call(plain_token_logps, model, batch)[0], rtol=0, atol=0)


# check_head: the model's logits against ours, within a rounding bound for the dtype the head computed in.


def head_case(dtype, scale=1.0, softcap=None):
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(6, 64), torch.randn(V, 64) * 0.2, torch.randn(V)
    return hidden, weight.to(dtype), bias.to(dtype), scale, softcap


def split_k_logits(hidden, weight, bias, scale, softcap, dtype, splits=4):
    """The head as another kernel computes it: partial sums over `splits` chunks of H, each rounded to dtype, then
    the transform in dtype; handed over in fp32, as accelerate hands over a model's outputs."""
    u = bias.to(dtype)
    for h, w in zip(hidden.to(dtype).chunk(splits, -1), weight.to(dtype).chunk(splits, -1)):
        u = (u.float() + h.float() @ w.float().T).to(dtype)
    z = u * scale if softcap is None else torch.tanh(u * scale / softcap) * softcap
    return z.to(dtype).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale,softcap", [(1.0, None), (0.25, None), (1.0, 3.0)])
def test_check_head_accepts_another_kernels_rounding_in_the_compute_dtype(dtype, scale, softcap):
    hidden, weight, bias, *_ = head_case(dtype)
    theirs = split_k_logits(hidden, weight, bias, scale, softcap, dtype)
    simpo.train.logps.check_head(theirs, hidden, weight, bias, scale, softcap, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_check_head_refuses_a_transform_it_does_not_apply(dtype):
    hidden, weight, bias, *_ = head_case(dtype)
    theirs = split_k_logits(hidden, weight, bias, 1.0, None, dtype) * 1.2  # a logit scale head_transform missed
    with pytest.raises(NotImplementedError, match=f"allowed .* in {str(dtype)[6:]}"):
        simpo.train.logps.check_head(theirs, hidden, weight, bias, 1.0, None, dtype)


def test_check_head_tolerance_comes_from_the_compute_dtype_not_the_tensor_handed_over():
    """bf16 logits handed over in fp32 pass as bf16 computations, and are refused as fp32 ones."""
    hidden, weight, bias, *_ = head_case(torch.float32)
    theirs = split_k_logits(hidden, weight, bias, 1.0, None, torch.bfloat16)
    assert theirs.dtype == torch.float32
    simpo.train.logps.check_head(theirs, hidden, weight, bias, 1.0, None, torch.bfloat16)
    with pytest.raises(NotImplementedError, match="in float32"):
        simpo.train.logps.check_head(theirs, hidden, weight, bias, 1.0, None, torch.float32)
