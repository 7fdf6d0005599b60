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


def byte_tokenizer(chat_template: str = LLAVA_OV_TEMPLATE, specials: list[str] | None = None):
    """A Qwen2 tokenizer whose vocabulary is the 256 GPT-2 byte symbols plus `specials` (default SPECIALS, ids
    256..; the first is the pad/unk token)."""
    specials = SPECIALS if specials is None else specials
    from transformers import Qwen2Tokenizer

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    vocab = {symbols[b]: b for b in range(256)}
    for i, tok in enumerate(specials):
        vocab[tok] = 256 + i
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token="<|endoftext|>", additional_special_tokens=specials[1:])
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


def save_siglip_selector(folder: Path, *, hidden: int = 32, image_size: int = 56, seed: int = 2) -> Path:
    """Write a tiny SigLIP text-image checkpoint folder (both towers, the byte tokenizer, a processor config): the
    file layout of google/siglip-so400m-patch14-384, for `--selector PATH`."""
    from transformers import SiglipConfig, SiglipModel

    _quiet()
    folder.mkdir(parents=True, exist_ok=True)
    tok = byte_tokenizer()
    tower = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2)
    cfg = SiglipConfig(text_config=dict(tower, vocab_size=len(tok), max_position_embeddings=64,
                                        pad_token_id=tok.pad_token_id, projection_size=hidden),
                       vision_config=dict(tower, image_size=image_size, patch_size=14))
    torch.manual_seed(seed)
    SiglipModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": image_size, "width": image_size}}))
    return folder


# ------------------------------------------------------------------------------------------ Qwen-VL families
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def _qwen_template(default_system: bool) -> str:
    """The shape of the hub chat templates: a video item renders as <|vision_start|><|video_pad|><|vision_end|>
    in content order; Qwen2-VL and Qwen2.5-VL add a default system turn, Qwen3-VL does not."""
    system = ("{% if loop.first and message['role'] != 'system' %}"
              "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
              if default_system else "")
    return ("{% for message in messages %}" + system + "{{ '<|im_start|>' + message['role'] + '\n' }}"
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for item in message['content'] %}{% if item['type'] == 'video' %}"
            "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}{% elif item['type'] == 'image' %}"
            "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}"
            "{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


QWEN2_TEMPLATE = _qwen_template(default_system=True)
QWEN3_TEMPLATE = _qwen_template(default_system=False)
QWEN_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def qwen_tokenizer(kind: str = "qwen2_5_vl"):
    """The byte-level tokenizer with Qwen's vision special tokens and the family's chat-template shape."""
    return byte_tokenizer(QWEN3_TEMPLATE if kind.startswith("qwen3") else QWEN2_TEMPLATE, QWEN_SPECIALS)


def tiny_qwen_vl(tok, kind: str = "qwen2_5_vl", *, seed: int = 0):
    """A Qwen2-VL / Qwen2.5-VL / Qwen3-VL (/ MoE) model with a 2-block vision tower (width 32) and a 2-layer text
    model (width 64, head_dim 16): the real token layout (patch 14 or 16, temporal patch 2, 2x2 merge), M-RoPE,
    Qwen2.5-VL's windowed attention (window 56 px = 2x2 merged tokens, last block full) and Qwen3-VL's DeepStack
    (features of both vision blocks added after LLM layers 0 and 1)."""
    import transformers

    torch.manual_seed(seed)
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    text = dict(vocab_size=272, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=32768, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        text.update(bos_token_id=None,  # the default (151643) is outside the tiny vocabulary
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    else:
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                     "mrope_interleaved": True})
    if kind == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        cfg, cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    elif kind == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=56,
                      fullatt_block_indexes=[1])
        cfg, cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    elif kind in ("qwen3_vl", "qwen3_vl_moe"):
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                      deepstack_visual_indexes=[0, 1])
        if kind == "qwen3_vl":
            cfg, cls = transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration
        else:
            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
            cfg, cls = transformers.Qwen3VLMoeConfig, transformers.Qwen3VLMoeForConditionalGeneration
    else:
        raise ValueError(f"unknown Qwen-VL kind {kind!r}; one of {QWEN_KINDS}")
    model = cls(cfg(text_config=text, vision_config=vision, **ids)).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def save_qwen_checkpoint(folder: Path, kind: str = "qwen2_5_vl") -> Path:
    """Write a tiny Qwen-VL checkpoint folder (weights, config, tokenizer with its chat template)."""
    _quiet()
    folder.mkdir(parents=True, exist_ok=True)
    tok = qwen_tokenizer(kind)
    tiny_qwen_vl(tok, kind).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
