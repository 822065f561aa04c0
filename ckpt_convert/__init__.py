"""Checkpoint converters: Hugging Face downloads to what PMG loads, torch-free, every tensor accounted for.

``python -m ckpt_convert <llama|sd|clip|lpips> --src ... --dst ...`` (see ``ckpt_convert/README.md``):

- ``llama``: HF ``LlamaForCausalLM`` folder <-> MindFormers ``.ckpt`` (+ the ``models.llm`` config section);
- ``sd``: diffusers folder or single-file SD 1.x/2.x checkpoint -> diffusers folder for MindONE;
- ``clip``: HF ``CLIPModel`` folder -> folder for MindONE's ``CLIPModel``;
- ``lpips``: torchvision VGG16/AlexNet weights + the ``lpips`` package's v0.1 heads -> MindSpore LPIPS ``.ckpt``.

Modules: :mod:`ckpt_convert.sources` reads and checks input files, :mod:`ckpt_convert.targets` checks a
conversion plan, writes outputs atomically and sums them up; one module per model family.
"""
from ckpt_convert.sources import ConversionError
from ckpt_convert.targets import Summary

__all__ = ["ConversionError", "Summary"]
