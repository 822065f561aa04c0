"""research.pmg.plan: hand-computed tiny counts, parity with the PyTorch reference models, and the CLI.

PyTorch is the reference here only (the plan itself imports no framework). Models are built on the meta
device (parameter counts) or as fake tensors (FLOPs with ``torch.utils.flop_counter``, kept activations with
``torch.autograd.graph.saved_tensors_hooks``): shapes without memory, so Llama-2-7B and SD 1.5 take seconds.

``FlopCounterMode`` does not count CPU scaled-dot-product attention (``aten._scaled_dot_product_flash_attention
_for_cpu`` has no entry in its registry), so the references run their eager attention (transformers
``attn_implementation="eager"``, diffusers ``AttnProcessor``): explicit ``bmm``s it counts. Tolerances: FLOPs
0.1 % (the only difference is transformers' rotary-embedding ``bmm``, which the plan leaves out), kept
activations 1 % (the norms' mean / rstd statistics and the shared rotary tables, which the plan leaves out).
"""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.flops import LLAMA2_7B, SD15_UNET, SD15_VAE, count
from research.pmg.cli import USER_ERROR_EXIT, run
from research.pmg.config import ClipConfig, ConfigError, DiffusionConfig, LlamaConfig, SchedulerConfig, load_config
from research.pmg.plan import CHIPS, Assumptions, make_plan, to_json
from research.pmg.plan import llama
from research.pmg.plan.__main__ import main
from research.pmg.plan.arch import (CLIP_TEXT_DEFAULTS, CLIP_VISION_DEFAULTS, CLIP_VIT_L14, KNOWN_SD, UNET_DEFAULTS,
                                    VAE_DEFAULTS, clip_arch, diffusion_archs)
from research.pmg.plan.clip import clip_model_params, text_tally, vision_tally
from research.pmg.plan.unet import unet_tally, vae_params, vae_tally

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
MOVIELENS = ROOT / "configs" / "movielens.yaml"
FLOPS_TOL, KEPT_TOL = 1e-3, 1e-2


@pytest.fixture(scope="module")
def tiny():
    return load_config(TINY)


def _hf_llama_config(llm: LlamaConfig, **extra):
    from transformers import LlamaConfig as HFLlamaConfig

    return HFLlamaConfig(vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, num_hidden_layers=llm.num_layers,
                         num_attention_heads=llm.num_heads, num_key_value_heads=llm.n_kv_heads or llm.num_heads,
                         intermediate_size=llm.intermediate_size, tie_word_embeddings=False, **extra)


LLAMA_7B = LlamaConfig()  # the defaults are Llama-2-7B
assert LLAMA2_7B["hidden_size"] == LLAMA_7B.hidden_size and LLAMA2_7B["intermediate_size"] == LLAMA_7B.intermediate_size


def _known(prediction_type="epsilon"):
    """The architectures the plan assumes for an absent SD folder."""
    return diffusion_archs(DiffusionConfig(path="/nonexistent/sd", scheduler=SchedulerConfig(
        prediction_type=prediction_type)))


# ---------------------------------------------------------------------------------------------------------------------
# The tiny config by hand
# ---------------------------------------------------------------------------------------------------------------------
def test_tiny_llama_counts_by_hand(tiny):
    llm, soft = tiny.models.llm, tiny.models.soft_preference
    # vocab 512, hidden 64, 2 layers, 4 heads (n_kv_heads 0 = 4, head 16: kv width 64), intermediate 128
    embedding = 512 * 64  # 32768
    per_layer = (64 * 64 + 2 * 64 * 64 + 64 * 64  # wq, wk + wv, wo: 16384
                 + 3 * 64 * 128  # w1, w2, w3: 24576
                 + 2 * 64)  # two RMSNorm weights: 128  -> 41088
    assert llama.llama_params(llm) == {"embedding": 32768, "layers": 2 * per_layer, "final_norm": 64,
                                       "lm_head": 32768}
    assert sum(llama.llama_params(llm).values()) == 32768 + 82176 + 64 + 32768 == 147776

    # soft preference: prefix 4 x (2 layers x 2 x 64) = 1024, tokens 4 x 64 = 256, map Dense(64 -> 32) 64 x 32 + 32
    assert llama.soft_preference_params(llm, soft, 32) == {"prefix": 1024, "mm_tokens": 256, "map": 2080}

    # FLOPs over 512 tokens attending to 512 + 4 (prefix) keys: matmul weights 2 x (4096 + 8192 + 4096 + 24576)
    p_mm = 2 * (64 * 64 + 2 * 64 * 64 + 64 * 64 + 3 * 64 * 128)
    assert llama.matmul_params(llm) == p_mm == 81920
    assert llama.forward_flops(llm, 512, 516) == 2 * 81920 * 512 + 4 * 512 * 516 * 64 * 2 == 219_152_384
    assert llama.input_grad_flops(llm, 512, 516) == 2 * 81920 * 512 + 8 * 512 * 516 * 64 * 2
    assert llama.decode_flops(llm, 512) == 2 * 81920 + 4 * 512 * 64 * 2 + 2 * 512 * 64

    # KV cache of keyword extraction: batch 8 x 512 tokens / 16 = 256 blocks; 2 x 2 layers x 64 x 4 bytes x 256 x 16
    assert llama.kv_cache_blocks(llm, 8) == 256
    assert llama.kv_cache_blocks(llm, 8, configured=100) == 100
    assert llama.kv_cache_bytes(llm, 256, 4) == 2 * 2 * 64 * 4 * 256 * 16 == 4_194_304

    # Activations of one layer, fp32, batch 2, 512 tokens, 516 keys, no flash attention, fused RMSNorm:
    sb, tb = 512 * 2, 516 * 2
    elems = (2 * sb * 64  # RMSNorm inputs        131072
             + 3 * sb * 64 + sb * 128  # linear inputs   196608 + 131072
             + sb * 64 + 2 * tb * 64  # Q, K, V           65536 + 132096
             + 3 * sb * 128)  # SwiGLU                    393216
    assert elems == 1_049_600
    scores = 4 * 512 * 516 * 2 * 4  # fp32 softmax output, the same tensor feeds P V (fp32 compute)
    layer = elems * 4 + scores
    assert llama.layer_activation_bytes(llm, 512, 2, 516, dtype_bytes=4, flash=False) == layer == 12_652_544
    final_norm = 512 * 2 * 64 * 4
    assert llama.activation_bytes(llm, 512, 2, 516, dtype_bytes=4, flash=False, recompute=False) == \
        2 * layer + final_norm == 25_567_232
    assert llama.activation_bytes(llm, 512, 2, 516, dtype_bytes=4, flash=False, recompute=True) == \
        2 * final_norm + layer + final_norm  # each layer's input, one layer's set, the final norm's input
    # bf16 with an fp32 softmax keeps the probabilities twice (fp32, and the bf16 copy P V reads): 6 bytes each
    assert llama.layer_activation_bytes(llm, 512, 2, 516, dtype_bytes=2, flash=False) == elems * 2 + \
        4 * 512 * 516 * 2 * (4 + 2)
    # flash attention keeps only its softmax statistics: 2 x (b, a, s, 8) fp32
    assert llama.layer_activation_bytes(llm, 512, 2, 516, dtype_bytes=2, flash=True) == elems * 2 + \
        2 * 2 * 4 * 512 * 8 * 4
    # the frozen floor drops the linear inputs (196608 + 131072 elements) but the attention output flash reads
    assert llama.layer_activation_bytes(llm, 512, 2, 516, dtype_bytes=2, flash=True, frozen=True) == \
        (elems - 196608 - 131072 + sb * 64) * 2 + 2 * 2 * 4 * 512 * 8 * 4


def test_tiny_unet_parameters_by_hand(tiny):
    # Blocks [32, 64], 1 layer per block, context 32, time embedding 4 x 32 = 128. ResNet(cin, cout): two
    # GroupNorms, two 3x3 convolutions, time projection 128 -> cout, 1x1 shortcut when cin != cout.
    r32_32 = 2 * 32 + (9 * 32 * 32 + 32) + (128 * 32 + 32) + 2 * 32 + (9 * 32 * 32 + 32)
    r32_64 = 2 * 32 + (9 * 32 * 64 + 64) + (128 * 64 + 64) + 2 * 64 + (9 * 64 * 64 + 64) + (32 * 64 + 64)
    r64_64 = 2 * 64 + (9 * 64 * 64 + 64) + (128 * 64 + 64) + 2 * 64 + (9 * 64 * 64 + 64)
    r128_64 = 2 * 128 + (9 * 128 * 64 + 64) + (128 * 64 + 64) + 2 * 64 + (9 * 64 * 64 + 64) + (128 * 64 + 64)
    r96_64 = 2 * 96 + (9 * 96 * 64 + 64) + (128 * 64 + 64) + 2 * 64 + (9 * 64 * 64 + 64) + (96 * 64 + 64)
    r96_32 = 2 * 96 + (9 * 96 * 32 + 32) + (128 * 32 + 32) + 2 * 32 + (9 * 32 * 32 + 32) + (96 * 32 + 32)
    r64_32 = 2 * 64 + (9 * 64 * 32 + 32) + (128 * 32 + 32) + 2 * 32 + (9 * 32 * 32 + 32) + (64 * 32 + 32)
    assert (r32_32, r32_64, r64_64, r128_64, r96_64, r96_32, r64_32) == (22752, 65984, 82368, 127616, 107072,
                                                                         44416, 34112)
    # Transformer(C): GroupNorm, 1x1 proj_in / proj_out, three LayerNorms, self-attention (q, k, v, out + bias),
    # cross-attention (q; k, v from the 32-wide context; out + bias), GEGLU C -> 8C -> (4C) -> C
    t32 = 2 * 32 + 2 * (32 * 32 + 32) + 3 * 2 * 32 + (4 * 32 * 32 + 32) + (2 * 32 * 32 + 2 * 32 * 32 + 32) + \
        (32 * 256 + 256) + (128 * 32 + 32)
    t64 = 2 * 64 + 2 * (64 * 64 + 64) + 3 * 2 * 64 + (4 * 64 * 64 + 64) + (2 * 64 * 64 + 2 * 32 * 64 + 64) + \
        (64 * 512 + 512) + (256 * 64 + 64)
    assert (t32, t64) == (23200, 87360)
    time_embedding = (32 * 128 + 128) + (128 * 128 + 128)
    conv_in, conv_out = 9 * 4 * 32 + 32, 2 * 32 + 9 * 32 * 4 + 4  # conv_out after its GroupNorm
    down = (r32_32 + t32 + 9 * 32 * 32 + 32) + r32_64  # CrossAttnDownBlock2D + downsampler, DownBlock2D
    mid = r64_64 + t64 + r64_64
    up = (r128_64 + r96_64 + 9 * 64 * 64 + 64) + (r96_32 + t32 + r64_32 + t32)  # UpBlock2D + upsampler, CrossAttnUp
    total = time_embedding + conv_in + down + mid + up + conv_out
    assert total == 792_964
    assert unet_tally(diffusion_archs(tiny.models.diffusion)["unet"].fields).params == total


# ---------------------------------------------------------------------------------------------------------------------
# Parameters against PyTorch (meta device)
# ---------------------------------------------------------------------------------------------------------------------
def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_defaults_are_those_of_diffusers_and_transformers():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    for cls, table in ((UNet2DConditionModel, UNET_DEFAULTS), (AutoencoderKL, VAE_DEFAULTS)):
        signature = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        assert signature == table, cls.__name__
    for cls, table in ((CLIPTextConfig, CLIP_TEXT_DEFAULTS), (CLIPVisionConfig, CLIP_VISION_DEFAULTS)):
        reference = cls().to_dict()
        assert {k: reference[k] for k in table} == table, cls.__name__
    assert CLIPConfig().projection_dim == 512


UNET_VARIANTS = {  # options the SD releases use in other combinations than the tiny config
    "per-block layers, 2 transformer layers, linear projection": dict(
        layers_per_block=[1, 2], transformer_layers_per_block=2, use_linear_projection=True),
    "heads per block, three blocks, cross-attention up path": dict(
        block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 8],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
}


@pytest.mark.parametrize("variant", [None, *UNET_VARIANTS])
def test_unet_parameters_match_diffusers(tiny, variant):
    from diffusers import UNet2DConditionModel

    kwargs = {**tiny.models.diffusion.unet, **UNET_VARIANTS.get(variant, {})}
    with torch.device("meta"):
        reference = UNet2DConditionModel(**kwargs)
    assert unet_tally({**UNET_DEFAULTS, **kwargs}).params == _numel(reference)


def test_tiny_models_match_pytorch(tiny):
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, LlamaForCausalLM

    d, c, llm = tiny.models.diffusion, tiny.models.clip, tiny.models.llm
    archs = diffusion_archs(d)
    with torch.device("meta"):
        assert vae_params(archs["vae"].fields) == _numel(AutoencoderKL(**d.vae))
        text_encoder = CLIPTextModel(CLIPTextConfig(**d.text_encoder))
        assert text_tally(archs["text_encoder"].fields).params == _numel(text_encoder)
        assert clip_model_params(clip_arch(c)) == _numel(CLIPModel(CLIPConfig(
            text_config=c.text_config, vision_config=c.vision_config, projection_dim=c.projection_dim)))
        assert sum(llama.llama_params(llm).values()) == _numel(LlamaForCausalLM(_hf_llama_config(llm)))
        gqa = LlamaConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=96)
        assert sum(llama.llama_params(gqa).values()) == _numel(LlamaForCausalLM(_hf_llama_config(gqa)))


@pytest.mark.parametrize("prediction_type,name", [("epsilon", "Stable Diffusion 1.5"),
                                                  ("v_prediction", "Stable Diffusion 2.1")])
def test_known_architectures_match_pytorch(prediction_type, name):
    """Absent folders fall back to SD 1.5 (SD 2.1 when the scheduler predicts v) and CLIP ViT-L/14, whose sizes
    are the published ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    archs = _known(prediction_type)
    assert all(a.source.startswith(f"{name} (assumed") for a in archs.values())
    known = KNOWN_SD[name]
    with torch.device("meta"):
        unet = _numel(UNet2DConditionModel(**known["unet"]))
        vae = _numel(AutoencoderKL(**known["vae"]))
        text = _numel(CLIPTextModel(CLIPTextConfig(**known["text_encoder"])))
        clip = _numel(CLIPModel(CLIPConfig(**CLIP_VIT_L14)))
    assert unet_tally(archs["unet"].fields).params == unet
    assert vae_params(archs["vae"].fields) == vae
    assert text_tally(archs["text_encoder"].fields).params == text
    assert clip_model_params(clip_arch(ClipConfig(path="/nonexistent/clip"))) == clip == 427_616_513
    expected = {"Stable Diffusion 1.5": (859_520_964, 83_653_863, 123_060_480),
                "Stable Diffusion 2.1": (865_910_724, 83_653_863, 340_387_840)}[name]
    assert (unet, vae, text) == expected
    # Heads change neither parameters nor FLOPs, only the score matrices: SD 1.5 has 8 heads per block, SD 2.1
    # heads 64 wide (its attention_head_dim lists head counts, diffusers' naming)
    fields = archs["unet"].fields
    heads = fields["attention_head_dim"]
    widths = [c // h for c, h in zip(fields["block_out_channels"], heads)] if isinstance(heads, list) else None
    assert (heads, widths) == ((8, None) if name.endswith("1.5") else ([5, 10, 20, 20], [64] * 4))


def test_llama_7b_parameters_match_pytorch():
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        reference = _numel(LlamaForCausalLM(_hf_llama_config(LLAMA_7B)))
    assert sum(llama.llama_params(LLAMA_7B).values()) == reference == 6_738_415_616


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs against torch.utils.flop_counter (fake tensors, eager attention)
# ---------------------------------------------------------------------------------------------------------------------
def _unet_case(name, tiny_cfg):
    if name == "tiny":
        return tiny_cfg.models.diffusion.unet, tiny_cfg.models.diffusion.vae, 8, 32
    return SD15_UNET, SD15_VAE, 64, 77


@pytest.mark.parametrize("name", ["tiny", "sd15"])
def test_unet_and_vae_flops_match_flop_counter(tiny, name):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    unet_kwargs, vae_kwargs, latent, tokens = _unet_case(name, tiny)
    arch, vae_arch = {**UNET_DEFAULTS, **unet_kwargs}, {**VAE_DEFAULTS, **vae_kwargs}
    with FakeTensorMode(allow_non_fake_inputs=True):
        unet = UNet2DConditionModel(**unet_kwargs).requires_grad_(False)
        unet.set_attn_processor(AttnProcessor())
        vae = AutoencoderKL(**vae_kwargs).requires_grad_(False)
        vae.set_attn_processor(AttnProcessor())
        latents, step = torch.zeros(1, 4, latent, latent), torch.tensor([500])
        context = torch.zeros(1, tokens, arch["cross_attention_dim"], requires_grad=True)

        def forward():
            with torch.no_grad():
                unet(latents, step, encoder_hidden_states=context.detach())

        def forward_backward():  # PMG's step: frozen UNet, gradient to the context only
            unet(latents, step, encoder_hidden_states=context).sample.sum().backward()

        def decode():
            with torch.no_grad():
                vae.decode(latents)

        counted = (count(forward), count(forward_backward), count(decode))
    t = unet_tally(arch, latent=latent, context_tokens=tokens)
    size = latent * 2 ** (len(vae_arch["block_out_channels"]) - 1)
    assert t.flops == pytest.approx(counted[0], rel=FLOPS_TOL)
    assert t.flops + t.grad_flops == pytest.approx(counted[1], rel=FLOPS_TOL)
    assert vae_tally(vae_arch, size=size).flops == pytest.approx(counted[2], rel=FLOPS_TOL)


@pytest.mark.parametrize("name", ["tiny", "7b"])
def test_llama_flops_match_flop_counter(tiny, name):
    from transformers import LlamaModel

    llm, tokens = (tiny.models.llm, 64) if name == "tiny" else (LLAMA_7B, 1024)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = LlamaModel(_hf_llama_config(llm, attn_implementation="eager")).requires_grad_(False)
        embeds = torch.zeros(1, tokens, llm.hidden_size, requires_grad=True)

        def forward():
            with torch.no_grad():
                model(inputs_embeds=embeds.detach())

        def forward_backward():  # frozen weights: gradients to the input embeddings only
            model(inputs_embeds=embeds).last_hidden_state.sum().backward()

        counted = (count(forward), count(forward_backward))
    fwd = llama.forward_flops(llm, tokens)
    assert fwd == pytest.approx(counted[0], rel=FLOPS_TOL)
    assert fwd + llama.input_grad_flops(llm, tokens) == pytest.approx(counted[1], rel=FLOPS_TOL)


def test_clip_flops_match_flop_counter():
    from transformers import CLIPConfig, CLIPModel

    arch = clip_arch(ClipConfig(path="/nonexistent/clip"))
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = CLIPModel(CLIPConfig(**CLIP_VIT_L14)).requires_grad_(False)
        model.set_attn_implementation("eager")

        def image():
            with torch.no_grad():
                model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224))

        def text():
            with torch.no_grad():
                model.get_text_features(input_ids=torch.zeros(1, 77, dtype=torch.long))

        counted = (count(image), count(text))
    assert vision_tally(arch.vision, projection_dim=768).flops == pytest.approx(counted[0], rel=FLOPS_TOL)
    assert text_tally(arch.text, projection_dim=768).flops == pytest.approx(counted[1], rel=FLOPS_TOL)


# ---------------------------------------------------------------------------------------------------------------------
# Kept activations against the tensors PyTorch's autograd saves
# ---------------------------------------------------------------------------------------------------------------------
def _saved_bytes(model, fn) -> int:
    """Bytes of the distinct tensors autograd saves for the backward of ``fn``, weights excluded."""
    weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    seen, alive = {}, []

    def pack(tensor):
        storage = tensor.untyped_storage()
        alive.append(tensor)  # keeps storage ids unique while counting
        if storage._cdata not in weights:
            seen[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("name", ["tiny", "sd15"])
def test_unet_kept_activations_match_autograd(tiny, name, frozen):
    """Every weight trainable (the convention of the plan's figure): each op keeps its inputs, and every op is on
    the gradient path. Frozen: PMG's step (gradients to the context only), where PyTorch keeps what the input
    gradients read plus each convolution's input (it does not skip those for a frozen weight; it does for a
    linear layer's): the plan's floor with convolution inputs, which checks which ops are on PMG's path."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    unet_kwargs, _, latent, tokens = _unet_case(name, tiny)
    arch, batch = {**UNET_DEFAULTS, **unet_kwargs}, 2 if name == "tiny" else 1
    with FakeTensorMode(allow_non_fake_inputs=True):
        unet = UNet2DConditionModel(**unet_kwargs).eval().requires_grad_(not frozen)
        unet.set_attn_processor(AttnProcessor())
        context = torch.zeros(batch, tokens, arch["cross_attention_dim"], requires_grad=True)
        saved = _saved_bytes(unet, lambda: unet(torch.zeros(batch, 4, latent, latent), torch.tensor([500] * batch),
                                                encoder_hidden_states=context))
    if frozen:
        t = unet_tally(arch, latent=latent, context_tokens=tokens, weight_inputs=("conv",))
    else:
        t = unet_tally(arch, latent=latent, context_tokens=tokens, trainable=True)
    assert t.kept * 4 * batch == pytest.approx(saved, rel=KEPT_TOL)  # fp32


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("name", ["tiny", "gqa", "7b"])
def test_llama_kept_activations_match_autograd(tiny, name, frozen):
    """transformers' eager Llama in fp32: its RMSNorm is unfused (keeps input and normalised copy, the copy only
    for the weight's gradient) and its softmax output feeds ``P V`` directly (one copy), so the formula runs with
    ``fused_norm=False``, 4-byte softmax. Frozen: the floor, what PyTorch keeps for input gradients alone."""
    from transformers import LlamaModel

    llm, tokens, batch = {"tiny": (tiny.models.llm, 64, 2), "7b": (LLAMA_7B, 1024, 1),
                          "gqa": (LlamaConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2,
                                              intermediate_size=96), 64, 2)}[name]
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = LlamaModel(_hf_llama_config(llm, attn_implementation="eager")).eval().requires_grad_(not frozen)
        embeds = torch.zeros(batch, tokens, llm.hidden_size, requires_grad=True)
        saved = _saved_bytes(model, lambda: model(inputs_embeds=embeds))
    kept = llama.activation_bytes(llm, tokens, batch, dtype_bytes=4, flash=False, recompute=False, fused_norm=False,
                                  softmax_bytes=4, frozen=frozen)
    # at hidden size 64 the norms' fp32 statistics (one value per token) are 1-2 % of the floor
    assert kept == pytest.approx(saved, rel=KEPT_TOL if name == "7b" or not frozen else 2 * KEPT_TOL)


# ---------------------------------------------------------------------------------------------------------------------
# The plan of the paper's setting, and model folders
# ---------------------------------------------------------------------------------------------------------------------
def _plan(path=MOVIELENS, overrides=(), chip="910B", **kwargs):
    return make_plan(load_config(path, list(overrides)), Assumptions(CHIPS[chip], **kwargs))


def test_llama_7b_sd15_plan():
    """Llama-2-7B + SD 1.5 at batch 4, 1024 tokens, bf16, flash attention on a 910B."""
    plan = _plan(nproc=8)
    assert (plan.precision, plan.dtype_bytes, plan.flash) == ("bf16", 2, True)
    models = {m.name: m for m in plan.models}
    assert models["Llama (frozen)"].bytes == 6_738_415_616 * 2
    off, on, keywords, generate = plan.jobs
    weights = 2 * (6_738_415_616 + 859_520_964 + 83_653_863 + 123_060_480)
    assert off.weights == on.weights == weights
    assert off.trainable == sum(plan.soft_params.values()) * (16 + 4)  # grad_accum_steps 4: accumulation buffer
    # LLM part: 32 layers x (bf16 s b (16 h + 8 f) + 2 B t b kv correction for the prefix + flash statistics)
    s, b, h, f, t = 1024, 4, 4096, 11008, 1028
    layer = 2 * (s * b * (8 * h + 4 * f) + 2 * (t - s) * b * h) + 2 * b * 32 * s * 8 * 4
    assert off.parts["llm"] == 32 * layer + 2 * s * b * h
    assert on.parts["llm"] == 32 * 2 * s * b * h + layer + 2 * s * b * h
    assert on.activations < off.activations / 5
    # floor: the linear inputs but wo's (flash attention reads its output) dropped: s b (12 h + 6 f) bytes per layer
    floor_layer = 2 * (s * b * (6 * h + 3 * f) + 2 * (t - s) * b * h) + 2 * b * 32 * s * 8 * 4
    assert off.activations_floor == 32 * floor_layer + 2 * s * b * h + unet_tally(
        _known()["unet"].fields, context_tokens=158, flash=True, weight_inputs=()).kept * 4 * 2
    assert keywords.kv_cache == 2 * 32 * 4096 * 2 * (8 * 1024 // 16) * 16 == 4 * 2 ** 30
    assert set(off.headroom_gb) == {"32", "64"}
    assert off.headroom_gb["32"] == pytest.approx(32 - off.total / 2 ** 30)
    # 910A: fp16, no flash attention: the LLM keeps its fp32 + fp16 score matrices
    plan_a = _plan(chip="910A")
    assert (plan_a.precision, plan_a.flash, list(plan_a.jobs[0].headroom_gb)) == ("fp16", False, ["32"])
    assert plan_a.jobs[0].parts["llm"] - off.parts["llm"] == pytest.approx(
        32 * (32 * s * t * b * (4 + 2) - 2 * b * 32 * s * 8 * 4), rel=1e-9)


def test_flops_and_time():
    plan = _plan(nproc=8)
    train = plan.work[0]
    s, t = 1024, 1028
    assert train.parts["llm forward"] == llama.forward_flops(LLAMA_7B, s, t)
    assert train.parts["llm backward"] == llama.input_grad_flops(LLAMA_7B, s, t)
    rate = 313e12 * 0.30
    assert train.samples_per_s == pytest.approx(rate / train.flops)
    assert plan.run["samples"] == 3000 * 4 * 4 * 8
    assert plan.run["step_seconds"] == pytest.approx(16 * train.flops / rate)
    assert plan.run["hours"] > 3000 * plan.run["step_seconds"] / 3600  # + held-out evaluation
    recompute = _plan(overrides=["train.recompute=true"]).work[0]
    assert recompute.flops == pytest.approx(train.flops + train.parts["llm forward"] + train.parts["unet forward"])
    keywords = plan.work[2]
    assert keywords.flops == 12 * (llama.forward_flops(LLAMA_7B, s, logits=1) + 63 * llama.decode_flops(LLAMA_7B, s))
    faster = _plan(nproc=8, mfu=0.6, peak_tflops=400)
    assert faster.run["hours"] == pytest.approx(plan.run["hours"] * 313 * 0.3 / (400 * 0.6))


def test_model_folders_are_read(tmp_path, tiny):
    sd, clip = tmp_path / "sd", tmp_path / "clip"
    for name in ("unet", "vae", "text_encoder"):
        (sd / name).mkdir(parents=True)
        (sd / name / "config.json").write_text(json.dumps({"_class_name": "x", **getattr(tiny.models.diffusion, name)}))
    clip.mkdir()
    c = tiny.models.clip
    (clip / "config.json").write_text(json.dumps({"text_config": c.text_config, "vision_config": c.vision_config,
                                                  "projection_dim": c.projection_dim, "architectures": ["CLIPModel"]}))
    from_dicts = _plan(TINY)
    from_folders = _plan(TINY, [f"models.diffusion.path={sd}", f"models.clip.path={clip}"])
    assert [m.params for m in from_folders.models] == [m.params for m in from_dicts.models]
    assert from_folders.models[1].source == str(sd / "unet" / "config.json")
    (sd / "vae" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="vae/config.json: not valid JSON"):
        _plan(TINY, [f"models.diffusion.path={sd}"])
    (sd / "vae" / "config.json").unlink()
    with pytest.raises(ConfigError, match="vae/config.json: not found"):
        _plan(TINY, [f"models.diffusion.path={sd}"])


@pytest.mark.parametrize("override,message", [
    ("models.diffusion.unet.foo=1", "unknown field 'foo'"),
    ("models.diffusion.unet.dual_cross_attention=true", "dual_cross_attention = True is not modelled"),
    ("models.diffusion.unet.down_block_types=[AttnDownBlock2D,DownBlock2D]", "'AttnDownBlock2D' is not modelled"),
    ("models.diffusion.unet.block_out_channels=[32,-64]", "must be a positive integer"),
    ("models.diffusion.unet.norm_num_groups=7", "divisible by norm_num_groups"),
    ("models.diffusion.unet.attention_head_dim=3", "divisible by its attention_head_dim"),
    ("models.diffusion.unet.layers_per_block=[1,2,3]", "one per block_out_channels"),
    ("models.diffusion.unet.block_out_channels=32", "must be a non-empty list"),
    ("models.diffusion.vae.block_out_channels=[32,32,32]", "vae: down_block_types must have one entry"),
    ("models.clip.vision_config.patch_size=0", "models.clip.vision_config: field 'patch_size' must be a positive"),
])
def test_unmodelled_architectures_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message) as raised:
        _plan(TINY, [override])
    assert str(raised.value).startswith(f"{TINY}: models.")  # the file and the section are named


# ---------------------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------------------
def test_cli_movielens_without_weights(capsys):
    assert run(main, ["--config", str(MOVIELENS), "--nproc", "8"]) == 0
    out = capsys.readouterr().out
    assert "Stable Diffusion 1.5 (assumed: weights/stable-diffusion-v1-5 not found)" in out
    assert "CLIP ViT-L/14 (assumed" in out
    rows = [line for line in out.splitlines() if line.startswith(("| train,", "| keywords |", "| generate |"))]
    assert len(rows) == 4 and all(row.count("fit") == 2 for row in rows)
    assert "does not fit" in rows[0] and "fits" in rows[1]  # 32 GB without / with recompute
    assert "hours" in out and "313 TFLOPS" in out

    assert run(main, ["--config", str(MOVIELENS), "--json", "--chip", "910A", "--reserve-gb", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["assumptions"]["chip"] == "Ascend 910A" and doc["assumptions"]["reserve_gb"] == 3
    assert [list(j["fits"]) for j in doc["jobs"]] == [["32"]] * 4


@pytest.mark.parametrize("argv", [["--set", "train.batch_size=x"], ["--set", "nokey"], ["--set", "trian.lr=1"],
                                  ["--set", "keywords.templates=absent"], ["--nproc", "0"], ["--mfu", "2"]])
def test_cli_bad_input_is_one_error_line(capsys, argv):
    try:
        code = run(main, ["--config", str(MOVIELENS), *argv])
    except SystemExit as exc:  # argparse's own errors (research.pmg.cli.ArgumentParser: one line, exit 2)
        code = exc.code
    assert code == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_plan_imports_no_framework():
    """The plan reads YAML and JSON only: no MindSpore, no PyTorch (it runs in a fraction of a second)."""
    code = ("import sys; from research.pmg.plan.__main__ import main; main(['--config', 'configs/movielens.yaml']); "
            "bad = [m for m in ('mindspore', 'torch', 'mindformers', 'mindone') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "# Plan: configs/movielens.yaml" in result.stdout
