"""Steps per second of the PMG training step: MindSpore graph vs PyNative, and the same step in PyTorch eager.

    python benchmarks/bench_train_step.py                                   # tiny + small, all modes
    python benchmarks/bench_train_step.py --sizes tiny --steps 50 --repeats 3 --out results.jsonl
    python benchmarks/bench_train_step.py --modes ms-graph,pt-eager --set models.llm.seq_length=256

MindSpore side: the project's real step, built the way ``research.pmg.train.build`` builds it (``build_llm``,
``build_diffusion_parts``, ``SoftPreferenceEncoder``, ``PMGDiffusionLoss``, ``build_train_step``) from
configs/tiny.yaml (size ``tiny``) or tiny.yaml plus the overrides in ``SIZES`` (``small``, ``medium``), fed a fixed batch
of cached-encoding inputs: right-padded prompt ids, scaled latents, target and preference CLIP contexts, noise
and timesteps. PyTorch side: the same function in transformers + diffusers, configured from the same numbers:
``LlamaModel`` with the P-Tuning v2 prefix as per-layer past key/values and the L trainable input embeddings
appended, a ``Linear`` map, context = target + preference + soft tokens into ``UNet2DConditionModel``; AdamW
on the same trainable set with the same global-norm clipping (constant learning rate: the MindSpore step's
per-step table costs the same).

Before timing, each size is checked for parity: a MindSpore process (PyNative) writes its initial weights,
the batch, the loss, the soft embedding and the gradients of the trainable parameters; a PyTorch process loads
the weights (Llama through ``ckpt_convert.llama``, UNet and soft parts by name) and checks the loss within
1e-4, the soft embedding and the gradients within small relative tolerances. The timed PyTorch runs load the
same weights, so every timed run's first-step loss must equal the dump's too (this checks the graph-mode step).
The dump process also tries the project's step once in PyNative, in a process of its own (see
``allow_single_output``).

Every measured run is a fresh subprocess (compile time and peak RSS isolated); rounds alternate the modes so a
shared machine's load hits them alike. Reported per run: build time, first step (graph compile included),
median of the steps after warm-up, peak RSS, and the peak above the RSS right after the framework imports (before
anything is built: what the step itself costs). The table gives the median over rounds and the per-round spread;
the ratios are of steps/s, from the runs of this invocation, and of the peak above the post-import RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rounds import spread  # noqa: E402
from research.pmg.config import ConfigError, PMGConfig, load_config  # noqa: E402

TINY_CONFIG = REPO / "configs" / "tiny.yaml"
# ``small`` follows the reference measurement's small preset (shared/reference/perf-anchor) with a longer prompt.
SIZES = {
    "tiny": [],
    "small": ["models.llm.hidden_size=256", "models.llm.num_layers=4", "models.llm.num_heads=8",
              "models.llm.intermediate_size=688", "models.llm.seq_length=128",
              "models.diffusion.unet.block_out_channels=[64,128]", "models.diffusion.unet.sample_size=16",
              "models.diffusion.unet.cross_attention_dim=256", "models.diffusion.text_encoder.hidden_size=256",
              "models.diffusion.text_encoder.intermediate_size=512"],
    # Llama 512 x 8 layers over a 256-token sequence, UNet 128/256 at 16x16: where compute outweighs dispatch.
    "medium": ["models.llm.hidden_size=512", "models.llm.num_layers=8", "models.llm.num_heads=8",
               "models.llm.intermediate_size=1376", "models.llm.seq_length=256",
               "models.diffusion.unet.block_out_channels=[128,256]", "models.diffusion.unet.sample_size=16",
               "models.diffusion.unet.cross_attention_dim=512", "models.diffusion.text_encoder.hidden_size=512",
               "models.diffusion.text_encoder.intermediate_size=1024"],
}
MODES = ("ms-graph", "pt-eager", "ms-pynative")
PARITY_ATOL = 1e-4  # on the loss
# The loss alone is a weak check: through a random-init UNet, dropping the prefix or the padding mask moves it
# by less than 1e-4 at size small. The soft embedding (LLM output) and the gradients of the trainable parameters
# are compared too, relative to their largest entry (measured: ~1e-6 and ~3e-5; a RoPE offset on the prefix
# keys gives ~1e-4 and ~2e-3 at size small).
SOFT_RTOL, GRAD_RTOL = 2e-5, 1e-3
# MindSpore name of each trainable parameter -> the PyTorch module's (the frozen ones are named alike, or by
# ckpt_convert.llama for the LLM)
SOFT_PARAMS = {"encoder.mm_tokens": "mm_tokens", "encoder.to_context.weight": "to_context.weight",
               "encoder.to_context.bias": "to_context.bias",
               "encoder.prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table": "prefix"}
PYNATIVE_PROBE = "pynative-step.json"  # written by the dump: does build_train_step's step run in PyNative?
LOADED = 1.5  # 1-minute load average above which the report says the machine was busy


# ---------------------------------------------------------------------------------------------------------------------
# Shared by both sides: config and batch (NumPy only)
# ---------------------------------------------------------------------------------------------------------------------
def bench_config(size: str, extra: list[str], output_dir: str, mode: str = "graph", max_steps: int = 1000) -> PMGConfig:
    """tiny.yaml + the size's overrides + the user's; a learning-rate table long enough for every timed step."""
    return load_config(TINY_CONFIG, [*SIZES[size], *extra, f"runtime.output_dir={output_dir}",
                                     f"runtime.mode={mode}", f"train.max_steps={max_steps}"])


def make_batch(cfg: PMGConfig) -> dict[str, np.ndarray]:
    """One fixed training batch of cached-encoding inputs, in ``PMGDiffusionLoss`` argument order.

    prompt_ids ``(b, seq_length - L)`` int32, right-padded: the first row's prompt fills a quarter of it, the
    last row's all of it, so each row's L tokens sit at a different place; latents and noise ``(b, c, s, s)``; target_ctx
    and pref_ctx ``(b, tokenizer_max_length, ctx_dim)``; timesteps ``(b,)`` int32. Noise and timesteps come
    from the trainer's own generator.
    """
    from research.pmg.train.dataset import step_noise

    llm, diffusion, batch = cfg.models.llm, cfg.models.diffusion, cfg.train.batch_size
    rng = np.random.default_rng(cfg.runtime.seed)
    prompt_len = llm.seq_length - cfg.models.soft_preference.num_mm_tokens
    ids = np.full((batch, prompt_len), llm.pad_token_id, np.int32)
    for row, length in enumerate(np.linspace(prompt_len // 4, prompt_len, batch).astype(int)):
        ids[row, :length] = rng.integers(3, llm.vocab_size, length)
        ids[row, 0] = llm.bos_token_id
    unet = diffusion.unet
    shape = (batch, unet.get("in_channels", 4), unet["sample_size"], unet["sample_size"])
    noise, timesteps, _ = step_noise(shape, diffusion.scheduler.num_train_timesteps, 0, 0, cfg.runtime.seed)
    ctx = (batch, diffusion.tokenizer_max_length, unet["cross_attention_dim"])
    return {"prompt_ids": ids, "latents": rng.standard_normal(shape).astype(np.float32),
            "target_ctx": rng.standard_normal(ctx).astype(np.float32),
            "pref_ctx": rng.standard_normal(ctx).astype(np.float32), "noise": noise, "timesteps": timesteps}


def current_rss_mb() -> float:
    """This process's resident set now (``/proc/self/statm``), in MB."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _summary(times: list[float], losses: list[float], warmup: int, build_s: float, base_rss_mb: float,
             **extra) -> dict:
    """``base_rss_mb``: the RSS after the framework imports, before anything was built (what the step adds is
    the peak above it)."""
    steady = times[1 + warmup:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(build_s=round(build_s, 2), first_step_s=round(times[0], 4), median_s=statistics.median(steady),
                min_s=min(steady), max_s=max(steady), n=len(steady), peak_rss_mb=round(peak, 1),
                base_rss_mb=round(base_rss_mb, 1), peak_above_base_mb=round(peak - base_rss_mb, 1),
                loss_first=losses[0], loss_last=losses[-1], loss_finite=bool(np.all(np.isfinite(losses))), **extra)


# ---------------------------------------------------------------------------------------------------------------------
# MindSpore worker: the project's step
# ---------------------------------------------------------------------------------------------------------------------
def setup_mindspore(cfg: PMGConfig, context: list[str] = ()):
    """The runtime, then every module the build needs imported (the RSS baseline is taken after this).

    ``context``: ``KEY=VALUE`` items for ``mindspore.set_context`` on top of the runtime's, for experiments with
    graph options (VALUE is a Python literal, else a string).
    """
    import ast

    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    import mindspore as ms

    for item in context:
        key, _, value = item.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        ms.set_context(**{key: value})
    import research.pmg.models  # noqa: F401  (MindFormers and MindONE)
    import research.pmg.train.step  # noqa: F401
    return runtime


def build_mindspore(cfg: PMGConfig, runtime=None):
    """``(runtime, llama, loss_net)`` exactly as ``build_trainer`` wires them (seeded, so every run is identical)."""
    from research.pmg.runtime import seed_everything

    runtime = runtime or setup_mindspore(cfg)
    from research.pmg.models import build_diffusion_parts, build_llm, resolve_tokenizers
    from research.pmg.models.soft_preference import SoftPreferenceEncoder
    from research.pmg.train.step import PMGDiffusionLoss

    seed_everything(cfg.runtime.seed)
    sd = build_diffusion_parts(cfg, runtime, resolve_tokenizers(cfg, runtime))
    llama = build_llm(cfg, runtime, batch_size=cfg.train.batch_size)
    encoder = SoftPreferenceEncoder(llama, cfg.models.llm, cfg.models.soft_preference, sd.cross_attention_dim,
                                    runtime.compute_dtype)
    alphas = sd.scheduler.alphas_cumprod
    alphas = alphas.asnumpy() if hasattr(alphas, "asnumpy") else np.asarray(alphas)
    loss_net = PMGDiffusionLoss(encoder, sd.unet, alphas, sd.scheduler.config.prediction_type, cfg.train)
    return runtime, llama, loss_net


def run_mindspore(cfg: PMGConfig, steps: int, warmup: int, data: Path | None, context: list[str] = ()) -> dict:
    import mindspore as ms

    from research.pmg.train.step import build_train_step

    runtime = setup_mindspore(cfg, context)
    base_rss = current_rss_mb()
    started = time.perf_counter()
    runtime, _, loss_net = build_mindspore(cfg, runtime)
    step_cell, _ = build_train_step(loss_net, cfg.train)
    workaround = ""
    probe = data / PYNATIVE_PROBE if data else None
    if runtime.mode == "pynative" and probe and probe.is_file() and not json.loads(probe.read_text())["ok"]:
        workaround = allow_single_output(step_cell)
    inputs = [ms.Tensor(v) for v in make_batch(cfg).values()]
    trainable = {p.name: p.asnumpy().copy() for p in loss_net.trainable_params()}
    build_s = time.perf_counter() - started
    times, losses = [], []
    for _ in range(1 + warmup + steps):
        start = time.perf_counter()
        losses.append(float(step_cell(*inputs)[0].asnumpy()))  # asnumpy waits for the step to finish
        times.append(time.perf_counter() - start)
    updated = all(not np.array_equal(v, p.asnumpy()) for v, p in
                  ((trainable[p.name], p) for p in loss_net.trainable_params()))
    return _summary(times, losses, warmup, build_s, base_rss, framework="mindspore", mode=runtime.mode,
                    updated=updated, workaround=workaround, threads=ms.get_context("runtime_num_threads"),
                    context=list(context),
                    version=f"mindspore {ms.__version__}")


def allow_single_output(step_cell) -> str:
    """Let the project's step run in PyNative, where it fails (found by this benchmark; graph mode is fine).

    MindONE's ``TrainStep`` differentiates ``forward`` with ``has_aux=True``, which in PyNative requires at
    least two outputs; ``build_train_step``'s ``forward`` returns ``(loss,)``. Re-deriving the gradient
    function over ``(loss, loss)`` changes nothing else (aux outputs get no gradient); the proper fix is the
    same second output in ``research/pmg/train/step.py``. Must be applied before the first call: a failed call
    leaves PyNative's gradient executor broken. Returns the note recorded with the result.
    """
    from mindspore import ops

    forward = step_cell.forward

    def loss_twice(*inputs):
        (loss,) = forward(*inputs)
        return loss, loss

    step_cell.forward_and_backward = ops.value_and_grad(loss_twice, None, weights=step_cell.parameters, has_aux=True)
    return ("build_train_step's forward returns one output and PyNative has_aux needs two: gradient function "
            "re-derived over (loss, loss)")


def dump_mindspore(cfg: PMGConfig, data: Path) -> dict:
    """Initial weights, batch, loss and gradients for the parity check (``data/ms.npz``, Llama as ``llama.ckpt``)."""
    import mindspore as ms

    _, llama, loss_net = build_mindspore(cfg)
    batch = make_batch(cfg)
    params = loss_net.trainable_params()
    loss, grads = ms.value_and_grad(loss_net, None, params)(*[ms.Tensor(v) for v in batch.values()])
    names = {id(p): n for n, p in loss_net.parameters_and_names()}
    arrays = {f"w:{n}": p.asnumpy() for n, p in loss_net.parameters_and_names() if not n.startswith("encoder.llama.")}
    arrays.update({f"g:{names[id(p)]}": g.asnumpy() for p, g in zip(params, grads)})
    soft = loss_net.encoder(ms.Tensor(batch["prompt_ids"]))
    arrays.update({f"x:{k}": v for k, v in batch.items()}, loss=loss.asnumpy(), soft=soft.asnumpy())
    np.savez(data / "ms.npz", **arrays)
    ms.save_checkpoint([{"name": n, "data": p} for n, p in llama.parameters_and_names()], str(data / "llama.ckpt"))
    # Does the project's step itself run in PyNative? Tried here, in a process of its own: after a failure
    # PyNative's gradient executor is unusable, so the timed PyNative runs read the answer instead.
    from research.pmg.train.step import build_train_step

    step_cell, _ = build_train_step(loss_net, cfg.train)
    try:
        step_cell(*[ms.Tensor(v) for v in batch.values()])[0].asnumpy()
        probe = {"ok": True}
    except ValueError as exc:
        probe = {"ok": False, "error": str(exc).splitlines()[0]}
    (data / PYNATIVE_PROBE).write_text(json.dumps(probe))
    return dict(framework="mindspore", mode="pynative", role="dump", loss=float(loss.asnumpy()),
                pynative_step=probe)


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch worker: the same function in transformers + diffusers
# ---------------------------------------------------------------------------------------------------------------------
def build_torch(cfg: PMGConfig, data: Path | None):
    """The PyTorch PMG loss module; with ``data`` (a MindSpore dump) it carries the MindSpore weights."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import DynamicCache, LlamaConfig, LlamaModel

    llm, soft, train = cfg.models.llm, cfg.models.soft_preference, cfg.train
    sched_cfg = cfg.models.diffusion.scheduler
    kv_heads = llm.n_kv_heads or llm.num_heads
    head_dim = llm.hidden_size // llm.num_heads
    hf_config = LlamaConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads, num_key_value_heads=kv_heads,
        rms_norm_eps=llm.rms_norm_eps, rope_theta=llm.rope_theta, max_position_embeddings=llm.seq_length,
        pad_token_id=llm.pad_token_id, bos_token_id=llm.bos_token_id, eos_token_id=llm.eos_token_id,
        tie_word_embeddings=False, architectures=["LlamaForCausalLM"], attn_implementation="sdpa")
    scheduler = DDPMScheduler(num_train_timesteps=sched_cfg.num_train_timesteps, beta_start=sched_cfg.beta_start,
                              beta_end=sched_cfg.beta_end, beta_schedule=sched_cfg.beta_schedule)
    ctx_dim = cfg.models.diffusion.unet["cross_attention_dim"]

    class TorchPMGLoss(torch.nn.Module):
        """``PMGDiffusionLoss`` + ``SoftPreferenceEncoder`` in PyTorch (same inputs, same parameter roles)."""

        def __init__(self, llama, unet):
            super().__init__()
            self.llama, self.unet = llama.requires_grad_(False), unet.requires_grad_(False)
            # P-Tuning v2 table in MindFormers' Ptuning2Encoder layout: (S, layers * 2 * kv_heads * head_dim)
            self.prefix = torch.nn.Parameter(
                torch.randn(soft.prefix_len, llm.num_layers * 2 * kv_heads * head_dim) * 0.01)
            self.mm_tokens = torch.nn.Parameter(torch.randn(soft.num_mm_tokens, llm.hidden_size) * 0.01)
            self.to_context = torch.nn.Linear(llm.hidden_size, ctx_dim)
            self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float())
            self.register_buffer("positions", torch.arange(llm.seq_length)[None])  # RoPE from 0, as MindFormers

        def soft_preference(self, prompt_ids):
            """``SoftPreferenceEncoder``: prompt ids ``(b, prompt_len)`` -> ``(b, L, ctx_dim)``."""
            batch, n_mm = prompt_ids.shape[0], soft.num_mm_tokens
            kv = self.prefix[None].expand(batch, -1, -1).reshape(batch, soft.prefix_len, 2 * llm.num_layers,
                                                                   kv_heads, head_dim).permute(2, 0, 3, 1, 4)
            cache = DynamicCache()
            for layer in range(llm.num_layers):
                cache.update(kv[2 * layer], kv[2 * layer + 1], layer)
            # Right padding: row i's text (n_i tokens), its L tokens at n_i .. n_i + L - 1, then pads (not attended).
            lengths = (prompt_ids != llm.pad_token_id).sum(1)
            ids = torch.cat((prompt_ids, torch.full((batch, n_mm), llm.pad_token_id)), 1)
            embeds = self.llama.embed_tokens(ids)
            rows = torch.arange(batch)[:, None]
            slots = lengths[:, None] + torch.arange(n_mm)[None]  # (b, L)
            embeds = embeds.index_put((rows.expand(-1, n_mm), slots), self.mm_tokens[None].expand(batch, -1, -1))
            visible = torch.ones(batch, soft.prefix_len + ids.shape[1], dtype=torch.long)
            visible[:, soft.prefix_len:] = torch.arange(ids.shape[1])[None] < (lengths + n_mm)[:, None]
            hidden = self.llama(inputs_embeds=embeds, attention_mask=visible, past_key_values=cache,
                                position_ids=self.positions.expand(batch, -1), use_cache=True).last_hidden_state
            return self.to_context(hidden[rows, slots])

        def forward(self, prompt_ids, latents, target_ctx, pref_ctx, noise, timesteps):
            groups = [target_ctx * train.target_weight]
            if train.conditioning == "full":
                groups.append(pref_ctx * train.preference_weight)
            groups.append(self.soft_preference(prompt_ids) * train.soft_weight)
            alpha = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
            noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
            pred = self.unet(noisy, timesteps, encoder_hidden_states=torch.cat(groups, 1)).sample
            target = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents \
                if sched_cfg.prediction_type == "v_prediction" else noise
            return ((pred - target) ** 2).mean()

    unet = UNet2DConditionModel(**cfg.models.diffusion.unet)
    if data is None:
        return TorchPMGLoss(LlamaModel(hf_config), unet)
    from ckpt_convert.llama import to_hugging_face

    hf_config.save_pretrained(data / "hf-config")
    to_hugging_face(data / "llama.ckpt", data / "hf-llama", hf_config=data / "hf-config", overwrite=True)
    net = TorchPMGLoss(LlamaModel.from_pretrained(data / "hf-llama", attn_implementation="sdpa"), unet)
    dump = np.load(data / "ms.npz")
    names = dict(SOFT_PARAMS)
    names.update({k[2:]: k[2:] for k in dump.files if k.startswith("w:unet.")})  # diffusers names are MindONE's
    state = {dst: torch.from_numpy(dump[f"w:{src}"].astype(np.float32)) for src, dst in names.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("llama.") and k not in ("alphas_cumprod", "positions")]
    if missing or unexpected:
        raise RuntimeError(f"weight transfer: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net


def torch_batch(cfg: PMGConfig):
    import torch

    return [torch.from_numpy(v).long() if v.dtype == np.int32 else torch.from_numpy(v)
            for v in make_batch(cfg).values()]


def run_torch(cfg: PMGConfig, steps: int, warmup: int, data: Path | None) -> dict:
    import diffusers
    import torch
    import transformers
    from diffusers import UNet2DConditionModel  # noqa: F401  (the lazy imports build_torch triggers)
    from transformers import LlamaModel  # noqa: F401

    if data is not None:
        import ckpt_convert.llama  # noqa: F401
    base_rss = current_rss_mb()
    started = time.perf_counter()
    torch.set_num_threads(cfg.runtime.num_threads or os.cpu_count() or 1)
    net = build_torch(cfg, data).train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=(0.9, 0.999), eps=1e-6,
                                  weight_decay=cfg.train.weight_decay)
    inputs = torch_batch(cfg)
    before = [p.detach().clone() for p in params]
    build_s = time.perf_counter() - started

    def step() -> float:
        loss = net(*inputs)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    times, losses = [], []
    for _ in range(1 + warmup + steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    updated = all(not torch.equal(a, p) for a, p in zip(before, params))
    return _summary(times, losses, warmup, build_s, base_rss, framework="pytorch", mode="eager", updated=updated,
                    weights="mindspore" if data else "random", threads=torch.get_num_threads(),
                    version=f"torch {torch.__version__} transformers {transformers.__version__} "
                            f"diffusers {diffusers.__version__}")


def check_torch(cfg: PMGConfig, data: Path) -> dict:
    """Loss and gradients of the PyTorch step on the MindSpore weights and batch, against the dump."""
    import torch

    torch.set_num_threads(cfg.runtime.num_threads or os.cpu_count() or 1)
    net = build_torch(cfg, data).train()
    dump = np.load(data / "ms.npz")
    inputs = torch_batch(cfg)
    for name, ours in make_batch(cfg).items():
        assert np.array_equal(ours, dump[f"x:{name}"]), f"the batch differs from MindSpore's: {name}"
    with torch.no_grad():
        soft_rel = _rel_diff(dump["soft"], net.soft_preference(inputs[0]).numpy())
    loss = net(*inputs)
    loss.backward()
    params = dict(net.named_parameters())
    grad_rel = {ms_name: _rel_diff(dump[f"g:{ms_name}"], params[pt_name].grad.numpy())
                for ms_name, pt_name in SOFT_PARAMS.items()}
    diff = abs(float(dump["loss"]) - loss.item())
    passed = diff <= PARITY_ATOL and soft_rel <= SOFT_RTOL and max(grad_rel.values()) <= GRAD_RTOL
    return dict(framework="pytorch", mode="eager", role="parity", loss_ms=float(dump["loss"]), loss_pt=loss.item(),
                loss_abs_diff=diff, soft_max_rel_diff=soft_rel, grad_max_rel_diff=grad_rel, passed=passed)


def _rel_diff(reference: np.ndarray, other: np.ndarray) -> float:
    """max |reference - other| / max |reference|."""
    return float(np.abs(reference - other).max() / (np.abs(reference).max() + 1e-30))


def worker(args: argparse.Namespace) -> None:
    data = Path(args.data) if args.data else None
    mode = "pynative" if args.worker in ("ms-pynative", "ms-dump") else "graph"
    cfg = bench_config(args.size, args.set, str(Path(args.data or tempfile.mkdtemp()) / "output"), mode,
                       max_steps=max(1000, 1 + args.warmup + args.steps))
    if args.worker == "ms-dump":
        result = dump_mindspore(cfg, data)
    elif args.worker == "pt-parity":
        result = check_torch(cfg, data)
    elif args.worker.startswith("ms-"):
        result = run_mindspore(cfg, args.steps, args.warmup, data, args.context)
    else:
        has_dump = data is not None and (data / "ms.npz").is_file()
        result = run_torch(cfg, args.steps, args.warmup, data if has_dump else None)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------------
def launch(role: str, size: str, args: argparse.Namespace, data: Path, steps: int = 0, warmup: int = 0) -> dict:
    """Run one worker in a fresh interpreter; its RESULT line plus wall time and load, or the error."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", role, "--size", size, "--data", str(data),
           "--steps", str(steps), "--warmup", str(warmup)] + [x for s in worker_sets(args) for x in ("--set", s)] \
        + [x for c in args.context for x in ("--context", c)]
    env = dict(os.environ, GLOG_v="3", PYTHONWARNINGS="ignore")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=data, env=env, capture_output=True, text=True, timeout=args.timeout)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        record = json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else \
            dict(error=(proc.stderr or proc.stdout)[-3000:], returncode=proc.returncode)
    except subprocess.TimeoutExpired:
        record = dict(error=f"timed out after {args.timeout:.0f} s", returncode=None)
    record.update(run=role, size=size, wall_s=round(time.perf_counter() - started, 1), loadavg_before=round(load, 2),
                  loadavg_after=round(os.getloadavg()[0], 2))
    return record


def worker_sets(args: argparse.Namespace) -> list[str]:
    return [*args.set, f"runtime.num_threads={args.threads}"] if args.threads else list(args.set)


def plan(size: str, modes: list[str], args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(role, timed steps, warm-up steps) in order: parity first, then the rounds, modes alternating in each."""
    runs = [("ms-dump", 0, 0), ("pt-parity", 0, 0)]
    for round_ in range(args.repeats):
        for mode in modes:
            if mode != "ms-pynative":
                runs.append((mode, args.steps, args.warmup))
            elif round_ < args.pynative_rounds:  # no compile: one warm-up step is enough
                runs.append((mode, args.pynative_steps, min(args.warmup, 1)))
    return runs


def describe(record: dict) -> str:
    """One progress line for a finished run."""
    size, role = record["size"], record["run"]
    if "error" in record:
        return f"{size} {role}: FAILED (exit {record.get('returncode')}):\n{record['error'][-1500:]}"
    if role == "ms-dump":
        probe = record["pynative_step"]
        return (f"{size} {role}: loss {record['loss']:.7f} ({record['wall_s']} s); the project's step in PyNative: "
                + ("runs" if probe["ok"] else f"FAILS ({probe['error']}); PyNative runs use a workaround"))
    if role == "pt-parity":
        grads = ", ".join(f"{'prefix' if 'prefix' in k else k.split('.', 1)[1]} {v:.1e}"
                          for k, v in record["grad_max_rel_diff"].items())
        return (f"{size} parity {'passed' if record['passed'] else 'FAILED'}: loss MindSpore {record['loss_ms']:.7f} "
                f"PyTorch {record['loss_pt']:.7f} |diff| {record['loss_abs_diff']:.1e} (<= {PARITY_ATOL:g}); "
                f"max|diff|/max|x|: soft embedding {record['soft_max_rel_diff']:.1e} (<= {SOFT_RTOL:g}), "
                f"gradients {grads} (<= {GRAD_RTOL:g})")
    return (f"{size} {role} round {record['round']}: first step {record['first_step_s']:.2f} s, median "
            f"{record['median_s']:.4f} s/step over {record['n']}, peak RSS {record['peak_rss_mb']:.0f} MB "
            f"({record['peak_above_base_mb']:.0f} above the {record['base_rss_mb']:.0f} MB after imports), build "
            f"{record['build_s']:.1f} s, wall {record['wall_s']} s, load {record['loadavg_before']}->"
            f"{record['loadavg_after']}")


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}"


def report(records: list[dict], sizes: list[str], modes: list[str]) -> None:
    print("\n| framework/mode | size | first step s | median s/step (per round) | steps/s | peak RSS MB | "
          "peak above post-import RSS MB | loss at step 1 |")
    print("|---|---|---|---|---|---|---|---|")
    above: dict[tuple[str, str], float] = {}
    medians: dict[tuple[str, str], list[float]] = {}
    notes: set[str] = set()
    for size in sizes:
        for mode in modes:
            runs = [r for r in records if r["size"] == size and r["run"] == mode and "median_s" in r]
            if not runs:
                failed = [r for r in records if r["size"] == size and r["run"] == mode]
                if failed:
                    print(f"| {mode} | {size} | failed: {failed[0].get('error', '?')[-200:]!r} | | | | | |")
                continue
            per_round = [r["median_s"] for r in runs]
            medians[(size, mode)] = per_round
            mid = statistics.median(per_round)
            notes.update(r["workaround"] for r in runs if r.get("workaround"))
            label = mode + ("*" if any(r.get("workaround") for r in runs) else "")
            above[(size, mode)] = max(r["peak_above_base_mb"] for r in runs)
            print(f"| {label} | {size} | {', '.join(_fmt(r['first_step_s'], 2) for r in runs)} | "
                  f"{_fmt(mid)} ({', '.join(_fmt(m) for m in per_round)}) | {1 / mid:.2f} | "
                  f"{max(r['peak_rss_mb'] for r in runs):.0f} | {above[(size, mode)]:.0f} | "
                  f"{', '.join(_fmt(r['loss_first'], 6) for r in runs)} |")
    for size in sizes:
        dump = [r for r in records if r["size"] == size and r["run"] == "ms-dump" and "loss" in r]
        timed = [r for r in records if r["size"] == size and "loss_first" in r]
        if dump and timed:
            worst = max(abs(r["loss_first"] - dump[0]["loss"]) for r in timed)
            print(f"{size}: first-step loss of every timed run vs the MindSpore dump: max |diff| {worst:.1e}")
    for note in sorted(notes):
        print(f"* the project's step fails in PyNative; measured with a workaround: {note}")
    pairs = [(a, b) for a, b in (("ms-graph", "pt-eager"), ("ms-pynative", "pt-eager"), ("ms-graph", "ms-pynative"))
             if any((size, a) in medians and (size, b) in medians for size in sizes)]
    if pairs:
        print("\nratios of steps/s (of the medians over rounds; in brackets, the same ratio within each round):")
    for size in sizes:
        parts = []
        for a, b in pairs:
            if (size, a) in medians and (size, b) in medians:
                ratio = statistics.median(medians[(size, b)]) / statistics.median(medians[(size, a)])
                rounds = [y / x for x, y in zip(medians[(size, a)], medians[(size, b)])]
                parts.append(f"{a} / {b} = {ratio:.2f} [{spread(rounds)}]")
        if parts:
            print(f"  {size}: " + ";  ".join(parts))
    memory = [(size, above[(size, "ms-graph")] / above[(size, "pt-eager")]) for size in sizes
              if (size, "ms-graph") in above and (size, "pt-eager") in above]
    if memory:
        print("peak RSS above the post-import RSS, ms-graph / pt-eager (largest over rounds): "
              + ";  ".join(f"{size} {ratio:.2f}" for size, ratio in memory))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,small", help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run, after warm-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    p.add_argument("--repeats", type=int, default=2, help="rounds; each runs the modes once, in turn")
    p.add_argument("--pynative-steps", type=int, default=3, help="timed steps of a PyNative run (10-30x slower)")
    p.add_argument("--pynative-rounds", type=int, default=1, help="rounds that include the PyNative run")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of both frameworks (runtime.num_threads); 0: the config's (all cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every size (repeatable)")
    p.add_argument("--out", help="append one JSON line per run to this file")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per subprocess")
    p.add_argument("--context", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=[*MODES, "ms-dump", "pt-parity"], help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    if min(args.steps, args.pynative_steps, args.repeats) < 1 or min(args.warmup, args.pynative_rounds) < 0:
        p.error("--steps, --pynative-steps and --repeats must be >= 1; --warmup and --pynative-rounds >= 0")
    sizes, modes = args.sizes.split(","), args.modes.split(",")
    for name, chosen, known in (("size", sizes, SIZES), ("mode", modes, MODES)):
        if unknown := [x for x in chosen if x not in known]:
            p.error(f"unknown {name} {unknown[0]!r}; choose from {', '.join(known)}")
    for size in sizes:  # a bad override fails here, not in a subprocess
        try:
            bench_config(size, worker_sets(args), "output")
        except ConfigError as exc:
            p.error(str(exc))
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
          + (" -- NOTE: the machine was loaded; expect noisy times" if load[0] > LOADED else ""))
    print(f"sizes {sizes}, modes {modes}, {args.repeats} rounds of {args.steps} timed steps after {args.warmup} "
          f"warm-up; PyNative in {min(args.pynative_rounds, args.repeats)} round(s), {args.pynative_steps} steps; "
          f"threads {args.threads or 'all cores'}\n", flush=True)
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    records: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        for size in sizes:
            data = Path(tmp) / size
            data.mkdir()
            for role, steps, warmup in plan(size, modes, args):
                if role == "pt-parity" and "error" in records[-1]:
                    print(f"{size}: parity not checked (the MindSpore dump failed); PyTorch runs use random weights")
                    continue
                record = launch(role, size, args, data, steps, warmup)
                record.update(round=sum(1 for r in records if r["size"] == size and r["run"] == role) + 1,
                              warmup=warmup, overrides=worker_sets(args), started_loadavg=round(load[0], 2))
                records.append(record)
                if out:
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                print(describe(record), flush=True)
    if out:
        out.close()
    report(records, sizes, modes)
    parity = [r for r in records if r["run"] == "pt-parity"]
    parity_ok = len(parity) == len(sizes) and all(r.get("passed") for r in parity)
    print(f"\nparity (MindSpore weights in PyTorch; loss within {PARITY_ATOL:g}, soft embedding within {SOFT_RTOL:g} "
          f"and gradients within {GRAD_RTOL:g} relative):")
    for size in sizes:
        checked = [r for r in parity if r["size"] == size and "passed" in r]
        if not checked:
            print(f"  {size}: not checked (see the errors above)")
            continue
        r = checked[0]
        print(f"  {size}: {'passed' if r['passed'] else 'FAILED'}; loss |diff| {r['loss_abs_diff']:.1e}, soft "
              f"embedding {r['soft_max_rel_diff']:.1e}, gradients up to {max(r['grad_max_rel_diff'].values()):.1e}")
    print(f"total {time.perf_counter() - started:.0f} s; load average at start {load[0]:.2f}, at end "
          f"{os.getloadavg()[0]:.2f}" + (" (machine loaded: times are noisy)" if load[0] > LOADED else ""))
    return 0 if parity_ok and not any("error" in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
