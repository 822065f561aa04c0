"""FLOPs of PMG's work at real sizes (Llama-2-7B + SD 1.5) and the Ascend 910B throughput they imply: an estimate.

    python benchmarks/flops.py                       # the table, Markdown, on stdout
    python benchmarks/flops.py --peak-tflops 313 --mfu 0.2,0.3,0.4

FLOPs are counted, not guessed: the PyTorch reference models (transformers ``LlamaModel``, diffusers
``UNet2DConditionModel`` / ``AutoencoderKL``, transformers ``CLIPModel``) are built as fake tensors (shapes without
memory or arithmetic) with the real configurations and run under ``torch.utils.flop_counter.FlopCounterMode``,
which counts every matmul, convolution and attention (2 FLOPs per multiply-add). The same graphs are what the
MindSpore code runs. Per unit of work:

- training sample: the bias-correction LLM over the padded prompt (``models.llm.seq_length`` tokens) forward and
  backward to its input embeddings and prefix (the LLM is frozen: no weight gradients), and the UNet forward and
  backward to its conditioning context (also frozen) at 64x64 latents with the context PMG builds (target and
  preference keyword encodings, 77 tokens each, plus L = 4 soft tokens). VAE latents and text encodings are
  cached, so they are not part of a step;
- generated sample: the LLM forward once (the soft embedding), K x M = 3 candidates x 30 steps x 2 UNet passes
  (classifier-free guidance), 3 VAE decodes to 512 px, CLIP ViT-L/14 on 3 images and 2 texts;
- keyword sample: the prompts of one sample (5 attributes on the history + 5 on the target; targets repeat
  across samples, ignored here) prefilled at the padded length and 64 new tokens decoded with the KV cache.

Throughput = peak x MFU / FLOPs. Peak and MFU are assumptions, stated in the output: Ascend 910B bf16 dense
peak ~313 TFLOPS per NPU (910B3 class; other bins are 280-376), MFU 20/30/40 % (MindSpore/MindFormers report
30-50 % for Llama-7B pre-training at large batch; PMG's per-NPU batch of 4 and two models per step sit lower).
Data-parallel gradients are only the soft-preference parameters (~0.5 M values), so 8 NPUs scale ~linearly.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

PEAK_TFLOPS = 313.0
MFUS = (0.2, 0.3, 0.4)
SEQ_LENGTH = 1024  # configs/ascend_base.yaml models.llm.seq_length
CONTEXT_TOKENS = 77 + 77 + 4  # target keywords + preference keywords (CLIP text, 77 each) + L soft tokens
CANDIDATES, STEPS = 3, 30  # generate defaults: 3 weight sets x 1 image, 30 denoising steps, guidance on
KEYWORD_PROMPTS, NEW_TOKENS = 10, 64
TRAIN = dict(batch_per_npu=4, grad_accum=4, max_steps=3000)  # configs/ascend_base.yaml train

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


@dataclass
class Counts:
    llm_fwd: float
    llm_fwd_bwd: float
    unet_fwd: float
    unet_fwd_bwd: float
    vae_decode: float
    clip_score: float
    llm_decode_token: float

    @property
    def train_sample(self) -> float:
        return self.llm_fwd_bwd + self.unet_fwd_bwd

    @property
    def generate_sample(self) -> float:
        return self.llm_fwd + CANDIDATES * (STEPS * 2 * self.unet_fwd + self.vae_decode) + self.clip_score

    @property
    def keyword_sample(self) -> float:
        return KEYWORD_PROMPTS * (self.llm_fwd + NEW_TOKENS * self.llm_decode_token)


def count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def measure(seq_length: int = SEQ_LENGTH, context_tokens: int = CONTEXT_TOKENS) -> Counts:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaModel

    from diffusers.models.attention_processor import AttnProcessor

    # Eager attention everywhere: FlopCounterMode does not count PyTorch's fused scaled_dot_product_attention on
    # CPU, which would drop every attention matmul from the count (about 4 % of the LLM, 20 % of the UNet step).
    with FakeTensorMode(allow_non_fake_inputs=True):  # shapes only: no memory, no arithmetic
        llama = LlamaModel(LlamaConfig(**LLAMA2_7B, attn_implementation="eager")).requires_grad_(False)
        unet = UNet2DConditionModel(**SD15_UNET).requires_grad_(False)
        vae = AutoencoderKL(**SD15_VAE).requires_grad_(False)
        unet.set_attn_processor(AttnProcessor())
        vae.set_attn_processor(AttnProcessor())
        clip = CLIPModel(CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                     num_attention_heads=12, projection_dim=768),
                                    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                       num_attention_heads=16, patch_size=14, image_size=224,
                                                       projection_dim=768), projection_dim=768,
                                    attn_implementation="eager")).requires_grad_(False)
        embeds = torch.zeros(1, seq_length, LLAMA2_7B["hidden_size"], requires_grad=True)
        latents = torch.zeros(1, 4, 64, 64)
        context = torch.zeros(1, context_tokens, 768, requires_grad=True)
        step = torch.tensor([500])

        def llm_fwd():
            with torch.no_grad():
                llama(inputs_embeds=embeds.detach())

        def llm_fwd_bwd():
            llama(inputs_embeds=embeds).last_hidden_state.sum().backward()

        def unet_fwd():
            with torch.no_grad():
                unet(latents, step, encoder_hidden_states=context.detach())

        def unet_fwd_bwd():
            unet(latents, step, encoder_hidden_states=context).sample.sum().backward()

        def vae_decode():
            with torch.no_grad():
                vae.decode(latents)

        def clip_score():
            with torch.no_grad():
                clip.get_image_features(pixel_values=torch.zeros(CANDIDATES, 3, 224, 224))
                clip.get_text_features(input_ids=torch.zeros(2, 77, dtype=torch.long))

        def decode_token():  # one new token attending to a full cache (an upper bound for the attention part)
            with torch.no_grad():
                llama(inputs_embeds=torch.zeros(1, 1, LLAMA2_7B["hidden_size"]))

        llm_decode = count(decode_token) + 4 * LLAMA2_7B["num_hidden_layers"] * seq_length * LLAMA2_7B["hidden_size"]
        return Counts(llm_fwd=count(llm_fwd), llm_fwd_bwd=count(llm_fwd_bwd), unet_fwd=count(unet_fwd),
                      unet_fwd_bwd=count(unet_fwd_bwd), vae_decode=count(vae_decode), clip_score=count(clip_score),
                      llm_decode_token=llm_decode)


def estimate_markdown(counts: Counts, peak_tflops: float = PEAK_TFLOPS, mfus=MFUS, npus: int = 8) -> str:
    t = lambda flops: f"{flops / 1e12:.2f}"  # noqa: E731
    lines = [
        f"Estimate, not a measurement. Assumptions: Ascend 910B bf16 dense peak **{peak_tflops:g} TFLOPS** per NPU; "
        f"model FLOPs utilisation (MFU) **{', '.join(f'{m:.0%}' for m in mfus)}**; {npus} NPUs data parallel with "
        "linear scaling (only the soft-preference gradients are reduced). FLOPs counted on the PyTorch reference "
        f"graphs at real sizes (`benchmarks/flops.py`): Llama-2-7B over {SEQ_LENGTH} padded tokens, SD 1.5 UNet "
        f"at 64x64 latents with a {CONTEXT_TOKENS}-token context.", "",
        "| component | TFLOPs |", "|---|---|",
        f"| Llama-2-7B forward, {SEQ_LENGTH} tokens | {t(counts.llm_fwd)} |",
        f"| Llama-2-7B forward + backward to inputs/prefix (frozen weights) | {t(counts.llm_fwd_bwd)} |",
        f"| SD 1.5 UNet forward, 64x64 latents | {t(counts.unet_fwd)} |",
        f"| SD 1.5 UNet forward + backward to the context (frozen weights) | {t(counts.unet_fwd_bwd)} |",
        f"| SD 1.5 VAE decode to 512 px | {t(counts.vae_decode)} |",
        f"| **training sample** (LLM + UNet, forward + backward) | **{t(counts.train_sample)}** |",
        f"| **generated sample** ({CANDIDATES} candidates x {STEPS} steps x 2 (guidance), decode, CLIP, soft LLM pass)"
        f" | **{t(counts.generate_sample)}** |",
        f"| **keyword sample** ({KEYWORD_PROMPTS} prompts: prefill + {NEW_TOKENS} decoded tokens) | "
        f"**{t(counts.keyword_sample)}** |", "",
        "| work | " + " | ".join(f"MFU {m:.0%}" for m in mfus) + " |", "|---|" + "---|" * len(mfus)]
    rates = {name: [peak_tflops * 1e12 * m / flops for m in mfus] for name, flops in
             (("train", counts.train_sample), ("generate", counts.generate_sample),
              ("keywords", counts.keyword_sample))}
    lines.append("| training samples/s per NPU | " + " | ".join(f"{r:.1f}" for r in rates["train"]) + " |")
    samples = TRAIN["batch_per_npu"] * TRAIN["grad_accum"] * npus * TRAIN["max_steps"]
    per_step = samples // TRAIN["max_steps"]
    lines.append(f"| training run of `configs/ascend_base.yaml` ({TRAIN['max_steps']} steps x {per_step}"
                 f" samples on {npus} NPUs), hours | "
                 + " | ".join(f"{samples / (r * npus) / 3600:.1f}" for r in rates["train"]) + " |")
    lines.append("| generated samples/s per NPU | " + " | ".join(f"{r:.2f}" for r in rates["generate"]) + " |")
    lines.append("| keyword samples/s per NPU | " + " | ".join(f"{r:.2f}" for r in rates["keywords"]) + " |")
    lines += ["", "Decoding is memory-bound (one token at a time reads all 13 GB of bf16 weights), so keyword "
              "extraction will run well below these MFUs unless batched widely (`keywords.batch_size`); the "
              "training and generation figures are compute-bound estimates."]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    p.add_argument("--mfu", default=",".join(str(m) for m in MFUS))
    p.add_argument("--npus", type=int, default=8)
    args = p.parse_args()
    counts = measure()
    print(estimate_markdown(counts, args.peak_tflops, tuple(float(m) for m in args.mfu.split(",")), args.npus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
