"""The demo model: a small LLaVA-OneVision (SigLIP-style tower + Qwen2 LLM) that ships inside the package.

It is the real architecture (so `--model demo` runs through exactly the same adapter, pruning and decoding as
a downloaded checkpoint), small enough to answer on a 2-core CPU in well under a second, trained by
`python -m fastvid_cli.demo.train` on the synthetic shapes benchmark (`fastvid_cli.synth`), with its own
attention-pooling saliency head trained alongside (see train.py). Its weights live in `weights/`.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"

# 224 px frames on a 14-px patch grid: 16x16 patches, pooled to 8x8 = 64 video tokens per frame.
VISION = dict(model_type="siglip_vision_model", hidden_size=192, intermediate_size=768, num_hidden_layers=4,
              num_attention_heads=3, image_size=224, patch_size=14, vision_use_head=False)
TEXT = dict(model_type="qwen2", hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=10000.0)
FRAMES = 16


def build(seed: int = 0, text: dict | None = None):
    """(model, tokenizer, saliency_head, vision_config_dict) with random weights, ready to train. `text`: the LLM's
    config (default TEXT)."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    from fastvid_cli.models.siglip_head import SaliencyHead
    from fastvid_cli.tiny import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    text = dict(TEXT if text is None else text, vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    cfg = LlavaOnevisionConfig(vision_config=dict(VISION), text_config=text,
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                               vision_feature_select_strategy="full", image_grid_pinpoints=[[224, 224]],
                               tie_word_embeddings=True)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    head_cfg = dict(hidden_size=VISION["hidden_size"], intermediate_size=VISION["intermediate_size"],
                    num_attention_heads=VISION["num_attention_heads"], layer_norm_eps=1e-6,
                    hidden_act="gelu_pytorch_tanh")
    head = SaliencyHead(SiglipVisionConfig(**head_cfg))
    return model, tok, head, head_cfg
