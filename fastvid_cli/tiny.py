"""Tiny, randomly initialised checkpoints of the real architectures, saved like hub checkpoints.

Used by the test suite and by `examples/make_tiny_model.py` (a smoke test of the whole pipeline on any machine:
the answers of random weights are gibberish, but every stage, count and timing is real).

Everything is built in memory (no files, no network): a byte-level Qwen2 tokenizer (256 byte tokens + the
special tokens, no merges), a LLaVA-OneVision model with a small SigLIP tower and Qwen2 LLM, and a small SigLIP
vision model WITH its attention-pooling head (FastVID's saliency source). `save_pretrained` writes them as
folders that `from_pretrained` loads exactly as it loads a downloaded checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# The llava-hf chat template renders a video item as "<video>\n" before the text (images, then videos, text).
LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}{{ '<video>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer(chat_template: str = LLAVA_OV_TEMPLATE):
    """A Qwen2 tokenizer whose vocabulary is the 256 GPT-2 byte symbols plus SPECIALS (ids 256..)."""
    from transformers import Qwen2Tokenizer

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    vocab = {symbols[b]: b for b in range(256)}
    for i, tok in enumerate(SPECIALS):
        vocab[tok] = 256 + i
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:])
    tok.chat_template = chat_template
    return tok


def tiny_llava_onevision(tok, *, patch_grid: int = 27, seed: int = 0):
    """LLaVA-OV with a 2-layer SigLIP (width 32) on a patch_grid x patch_grid grid and a 2-layer Qwen2 (width 64).

    patch_grid=27 reproduces the real layout: 729 patches -> 14x14 = 196 video tokens per frame."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    cfg = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=14 * patch_grid, patch_size=14,
                           vision_use_head=False),
        text_config=dict(model_type="qwen2", vocab_size=272, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=16384, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[14 * patch_grid, 14 * patch_grid]],
    )
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def tiny_siglip_with_head(*, hidden: int = 32, seed: int = 1):
    """A SigLIP vision model with its MAP head, the shape of google/siglip-so400m-patch14-384 but tiny."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=28, patch_size=14, vision_use_head=True)
    return SiglipVisionModel(cfg).eval()


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def save_llava_checkpoint(folder: Path, *, patch_grid: int = 27, mean_std: float = 0.5) -> Path:
    """Write a tiny LLaVA-OV checkpoint folder (weights, config, tokenizer, processor config)."""
    _quiet()
    folder.mkdir(parents=True, exist_ok=True)
    tok = byte_tokenizer()
    model = tiny_llava_onevision(tok, patch_grid=patch_grid)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    size = 14 * patch_grid
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [mean_std] * 3, "image_std": [mean_std] * 3, "size": {"height": size, "width": size},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255}))
    return folder


def save_saliency_checkpoint(folder: Path) -> Path:
    _quiet()
    folder.mkdir(parents=True, exist_ok=True)
    tiny_siglip_with_head().save_pretrained(folder)
    return folder
