"""FLOPs of PMG's work at real sizes (Llama-2-7B + SD 1.5) and the Ascend 910B throughput they imply: an estimate.

    python benchmarks/flops.py                       # the table, Markdown, on stdout
    python benchmarks/flops.py --peak-tflops 313 --mfu 0.2,0.3,0.4

FLOPs are counted, not guessed: the PyTorch reference models (transformers ``LlamaModel``, diffusers
``UNet2DConditionModel`` / ``AutoencoderKL``, transformers ``CLIPModel``) are built as fake tensors (shapes without
memory or arithmetic) with the real configurations and run under ``torch.utils.flop_counter.FlopCounterMode``,
which counts every matmul, convolution and attention (2 FLOPs per multiply-add). The same graphs are what the
MindSpore code runs. Per unit of work:

- training sample: the bias-correction LLM over the prompt forward and backward to its input embeddings and prefix
  (the LLM is frozen: no weight gradients), and the UNet forward and backward to its conditioning context (also
  frozen) at 64x64 latents with the context PMG builds (target and preference keyword encodings, 77 tokens each,
  plus L = 4 soft tokens). VAE latents and text encodings are cached, so they are not part of a step;
- generated sample: the LLM forward once (the soft embedding), K x M = 3 candidates x 30 steps x 2 UNet passes
  (classifier-free guidance), 3 VAE decodes to 512 px, CLIP ViT-L/14 on 3 images and 2 texts;
- keyword sample: the prompts of one sample (5 attributes on the history + 5 on the target; targets repeat
  across samples, ignored here) prefilled at the padded length and 64 new tokens decoded with the KV cache.

The LLM's sequence is counted twice. Unbucketed, every prompt is padded to ``models.llm.seq_length`` = 1024 (the
reference). With ``models.soft_preference.length_buckets`` a micro-batch runs at the smallest bucket that holds
its longest prompt + L, so a training or generated sample costs the LLM FLOPs of each bucket weighted by the
share of micro-batches that run at it (``TRAIN_BUCKETS``, ``GENERATE_BUCKETS``: measured by
``benchmarks/prompt_lengths.py``, see there). Keyword extraction is not bucketed: its prompts stay at 1024.

Throughput = peak x MFU / FLOPs. Peak and MFU are assumptions, stated in the output: Ascend 910B bf16 dense
peak ~313 TFLOPS per NPU (910B3 class; other bins are 280-376), MFU 20/30/40 % (MindSpore/MindFormers report
30-50 % for Llama-7B pre-training at large batch; PMG's per-NPU batch of 4 and two models per step sit lower).
Data-parallel gradients are only the soft-preference parameters (~0.5 M values), so 8 NPUs scale ~linearly.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

PEAK_TFLOPS = 313.0
MFUS = (0.2, 0.3, 0.4)
SEQ_LENGTH = 1024  # configs/ascend_base.yaml models.llm.seq_length
CONTEXT_TOKENS = 77 + 77 + 4  # target keywords + preference keywords (CLIP text, 77 each) + L soft tokens
CANDIDATES, STEPS = 3, 30  # generate defaults: 3 weight sets x 1 image, 30 denoising steps, guidance on
KEYWORD_PROMPTS, NEW_TOKENS = 10, 64
TRAIN = dict(batch_per_npu=4, grad_accum=4, max_steps=3000)  # configs/ascend_base.yaml train
# Share of LLM passes at each bucket length (history prompt + L tokens) with configs/movielens.yaml's buckets:
# `benchmarks/prompt_lengths.py` with the Llama 2 tokenizer.model on MovieLens-100k (real GroupLens titles, RecBole's
# copy; 51,888 samples, history 3). Training: micro-batches of train.batch_size = 4 drawn at random; generation:
# the soft-embedding pass of one sample. Longer histories (POG's Chinese titles) sit in larger buckets: see
# benchmarks/results.md.
TRAIN_BUCKETS = {64: 0.9889, 128: 0.0111}
GENERATE_BUCKETS = {64: 0.9972, 128: 0.0028}
BUCKETS_MEASURED_ON = "MovieLens-100k"
SHOWN_LENGTHS = (64, 128, 256, 512)  # configs/ascend_base.yaml length_buckets: LLM FLOPs at each, for other data

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
    llm_fwd: float  # at seq_length (padded)
    llm_fwd_bwd: float
    unet_fwd: float
    unet_fwd_bwd: float
    vae_decode: float
    clip_score: float
    llm_decode_token: float
    llm_fwd_bucketed: float = 0.0  # expected over GENERATE_BUCKETS
    llm_fwd_bwd_bucketed: float = 0.0  # expected over TRAIN_BUCKETS
    by_length: dict = field(default_factory=dict)  # bucket length -> (LLM forward, forward + backward)

    @property
    def train_sample(self) -> float:
        return self.llm_fwd_bwd + self.unet_fwd_bwd

    @property
    def train_sample_bucketed(self) -> float:
        return self.llm_fwd_bwd_bucketed + self.unet_fwd_bwd

    @property
    def generate_sample(self) -> float:
        return self.llm_fwd + self._generate_rest

    @property
    def generate_sample_bucketed(self) -> float:
        return self.llm_fwd_bucketed + self._generate_rest

    @property
    def _generate_rest(self) -> float:
        return CANDIDATES * (STEPS * 2 * self.unet_fwd + self.vae_decode) + self.clip_score

    @property
    def keyword_sample(self) -> float:
        return KEYWORD_PROMPTS * (self.llm_fwd + NEW_TOKENS * self.llm_decode_token)


def count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def expected(shares: dict[int, float], flops_at: dict[int, float]) -> float:
    """FLOPs of one pass averaged over the share of passes that run at each bucket length."""
    if abs(sum(shares.values()) - 1) > 1e-6:
        raise ValueError(f"bucket shares {shares} do not sum to 1")
    return sum(share * flops_at[length] for length, share in shares.items())


def measure(seq_length: int = SEQ_LENGTH, context_tokens: int = CONTEXT_TOKENS, train_buckets=TRAIN_BUCKETS,
            generate_buckets=GENERATE_BUCKETS) -> Counts:
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
        latents = torch.zeros(1, 4, 64, 64)
        context = torch.zeros(1, context_tokens, 768, requires_grad=True)
        step = torch.tensor([500])

        def llm_counts(length):  # (forward, forward + backward to the inputs) over ``length`` tokens
            embeds = torch.zeros(1, length, LLAMA2_7B["hidden_size"], requires_grad=True)

            def llm_fwd():
                with torch.no_grad():
                    llama(inputs_embeds=embeds.detach())

            def llm_fwd_bwd():
                llama(inputs_embeds=embeds).last_hidden_state.sum().backward()

            return count(llm_fwd), count(llm_fwd_bwd)

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
        by_length = {n: llm_counts(n) for n in sorted({seq_length, *SHOWN_LENGTHS, *train_buckets, *generate_buckets})}
        return Counts(llm_fwd=by_length[seq_length][0], llm_fwd_bwd=by_length[seq_length][1],
                      unet_fwd=count(unet_fwd), unet_fwd_bwd=count(unet_fwd_bwd), vae_decode=count(vae_decode),
                      clip_score=count(clip_score), llm_decode_token=llm_decode,
                      llm_fwd_bucketed=expected(generate_buckets, {n: f for n, (f, _) in by_length.items()}),
                      llm_fwd_bwd_bucketed=expected(train_buckets, {n: fb for n, (_, fb) in by_length.items()}),
                      by_length=by_length)


def estimate_markdown(counts: Counts, peak_tflops: float = PEAK_TFLOPS, mfus=MFUS, npus: int = 8) -> str:
    t = lambda flops: f"{flops / 1e12:.2f}"  # noqa: E731
    shares = lambda buckets: ", ".join(f"{n}: {s:.1%}" for n, s in buckets.items())  # noqa: E731
    lines = [
        f"Estimate, not a measurement. Assumptions: Ascend 910B bf16 dense peak **{peak_tflops:g} TFLOPS** per NPU; "
        f"model FLOPs utilisation (MFU) **{', '.join(f'{m:.0%}' for m in mfus)}**; {npus} NPUs data parallel with "
        "linear scaling (only the soft-preference gradients are reduced). FLOPs counted on the PyTorch reference "
        f"graphs at real sizes (`benchmarks/flops.py`): Llama-2-7B over {SEQ_LENGTH} padded tokens (unbucketed, the "
        f"reference) or at its length buckets, SD 1.5 UNet at 64x64 latents with a {CONTEXT_TOKENS}-token context. "
        f"Bucketed: the share of LLM passes at each bucket (tokens: share) measured on {BUCKETS_MEASURED_ON} by "
        f"`benchmarks/prompt_lengths.py`, training micro-batches of {TRAIN['batch_per_npu']} "
        f"({shares(TRAIN_BUCKETS)}), generation's soft-embedding pass one sample at a time "
        f"({shares(GENERATE_BUCKETS)}).", "",
        "| component | TFLOPs |", "|---|---|",
        f"| Llama-2-7B forward, {SEQ_LENGTH} tokens | {t(counts.llm_fwd)} |",
        f"| Llama-2-7B forward + backward to inputs/prefix (frozen weights), {SEQ_LENGTH} tokens | "
        f"{t(counts.llm_fwd_bwd)} |"]
    lines += [f"| Llama-2-7B forward / forward + backward, {n} tokens | {t(f)} / {t(fb)} |"
              for n, (f, fb) in counts.by_length.items() if n != SEQ_LENGTH]
    lines += [
        f"| SD 1.5 UNet forward, 64x64 latents | {t(counts.unet_fwd)} |",
        f"| SD 1.5 UNet forward + backward to the context (frozen weights) | {t(counts.unet_fwd_bwd)} |",
        f"| SD 1.5 VAE decode to 512 px | {t(counts.vae_decode)} |",
        f"| **training sample** (LLM + UNet, forward + backward), padded to {SEQ_LENGTH} | "
        f"**{t(counts.train_sample)}** |",
        f"| **training sample**, length buckets | **{t(counts.train_sample_bucketed)}** |",
        f"| **generated sample** ({CANDIDATES} candidates x {STEPS} steps x 2 (guidance), decode, CLIP, soft LLM pass)"
        f", padded to {SEQ_LENGTH} | **{t(counts.generate_sample)}** |",
        f"| **generated sample**, length buckets | **{t(counts.generate_sample_bucketed)}** |",
        f"| **keyword sample** ({KEYWORD_PROMPTS} prompts: prefill + {NEW_TOKENS} decoded tokens; not bucketed) | "
        f"**{t(counts.keyword_sample)}** |", "",
        "| work | " + " | ".join(f"MFU {m:.0%}" for m in mfus) + " |", "|---|" + "---|" * len(mfus)]
    rate = lambda flops: [peak_tflops * 1e12 * m / flops for m in mfus]  # noqa: E731  per NPU
    samples = TRAIN["batch_per_npu"] * TRAIN["grad_accum"] * npus * TRAIN["max_steps"]
    per_step = samples // TRAIN["max_steps"]
    for label, flops in ((f"padded to {SEQ_LENGTH}", counts.train_sample), ("length buckets",
                                                                             counts.train_sample_bucketed)):
        lines.append(f"| training samples/s per NPU, {label} | " + " | ".join(f"{r:.1f}" for r in rate(flops)) + " |")
        lines.append(f"| training run of `configs/ascend_base.yaml` ({TRAIN['max_steps']} steps x {per_step}"
                     f" samples on {npus} NPUs), hours, {label} | "
                     + " | ".join(f"{samples / (r * npus) / 3600:.1f}" for r in rate(flops)) + " |")
    for label, flops in ((f"padded to {SEQ_LENGTH}", counts.generate_sample), ("length buckets",
                                                                               counts.generate_sample_bucketed)):
        lines.append(f"| generated samples/s per NPU, {label} | " + " | ".join(f"{r:.2f}" for r in rate(flops))
                     + " |")
    lines.append("| keyword samples/s per NPU | " + " | ".join(f"{r:.2f}" for r in rate(counts.keyword_sample))
                 + " |")
    lines += ["", "Decoding is memory-bound (one token at a time reads all 13 GB of bf16 weights), so keyword "
              "extraction will run well below these MFUs unless batched widely (`keywords.batch_size`); the "
              "training and generation figures are compute-bound estimates. Short buckets use an NPU less well "
              "than 1024 tokens (smaller matmuls), so the bucketed figures assume the same MFU optimistically."]
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
