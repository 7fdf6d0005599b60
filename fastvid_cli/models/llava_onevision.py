"""LLaVA-OneVision family (every checkpoint with model_type == "llava_onevision").

Data path: uint8 frames -> own preprocessing (bicubic+antialias, checkpoint mean/std) -> SigLIP tower (run layer
by layer, so frames go in chunks and no hidden-state list is kept) -> projector -> 2x2 bilinear pooling, exactly
as the stock `get_video_features` does, plus FastVID's saliency (SigLIP MAP-head attention) and frame features.
The prompt is the checkpoint's chat template with one `<video>` placeholder standing for F*N video tokens and
ONE trailing newline token; pruned tokens are spliced in with their original position ids.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastvid_cli.errors import ModelUnavailableError
from fastvid_cli.hub import HubUnreachableError, ModelRef
from fastvid_cli.models import loading
from fastvid_cli.models.interface import Assembled, FamilyAdapter, Prompt, VideoFeatures, chat_turns
from fastvid_cli.models.loading import device_of as _device_of
from fastvid_cli.models.siglip_head import DEFAULT_SALIENCY_MODEL, FALLBACK, OWN_HEAD_FILE, load_saliency_head
from fastvid_cli.preprocess import normalize, resize_frames

FAMILY = "llava_onevision"
# The paper's LLaVA-OV frame count (fastvid-spec.md §2.13); the pruning defaults of this family are the registry's
# (fastvid_cli.pruning, method family "llava").
DEFAULTS: dict[str, Any] = dict(frames=32)
SIGLIP_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
FALLBACK_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
                     "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<video>\n"
                     "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
                     "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def read_mean_std(ref: ModelRef) -> tuple[list[float], list[float], str]:
    """The checkpoint's normalisation constants, from its (video) processor config files."""
    return loading.read_mean_std(ref, SIGLIP_MEAN_STD, "default (SigLIP 0.5/0.5)")


class LlavaOnevisionAdapter(FamilyAdapter):
    family = FAMILY
    defaults = DEFAULTS
    method_family = "llava"  # which variant and defaults of each pruning method it runs (pruning.FAMILIES)
    # Each frame goes through SigLIP, the projector and the pooling alone: frames can be encoded in any groups
    # (the engine encodes them while the rest are still being decoded) and put back in order.
    frames_independent = True
    # Sampling: uniform frame counts (FamilyAdapter.frame_plan); preprocessing needs the frames alone
    # (FamilyAdapter.preprocess_clip); the prefill cost is the common model (FamilyAdapter.llm_prefill_flops).

    def __init__(self, model, tokenizer, ref: ModelRef, *, mean, std, norm_source: str, saliency_head,
                 saliency_source: str, warnings_: list[str]):
        self.model = model
        self.tokenizer = tokenizer
        self.ref = ref
        self.config = model.config
        self.mean, self.std, self.norm_source = mean, std, norm_source
        self.saliency_head = saliency_head
        self.saliency_source = saliency_source
        self.warnings = warnings_
        vcfg = self.config.vision_config
        self.image_size = int(vcfg.image_size)
        self.patch_grid = self.image_size // int(vcfg.patch_size)
        self.pooled_grid = math.ceil(self.patch_grid / 2)
        self.video_token_id = int(self.config.video_token_id)
        core = model.model
        self.vision = getattr(core.vision_tower, "vision_model", core.vision_tower)
        self.vision_device = _device_of(self.vision)
        self.embed_device = model.get_input_embeddings().weight.device
        self.dtype = next(model.parameters()).dtype

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, ref: ModelRef, config, *, device: str, dtype: torch.dtype, attn_implementation: str,
             saliency_model: str | None = None, device_map: Any = None) -> "LlavaOnevisionAdapter":
        from transformers import LlavaOnevisionForConditionalGeneration

        notes: list[str] = []
        tower_hidden = int(config.vision_config.hidden_size)
        head, source = None, "fallback: last-layer attention received + mean-pooled frame features"
        own = Path(ref.source) / OWN_HEAD_FILE if ref.is_local else None
        wanted = saliency_model or (str(ref.source) if own is not None and own.is_file() else DEFAULT_SALIENCY_MODEL)
        if wanted != FALLBACK:  # before the model: a missing download fails in seconds, not after a long load
            try:
                head = load_saliency_head(wanted, tower_hidden, "cpu", dtype)
                source = f"siglip-head: {wanted}"
            except HubUnreachableError as e:  # no network: say so now, not a silently different method
                raise HubUnreachableError(e.message, "run with --offline to use FastVID's built-in saliency "
                                          "fallback (last-layer attention), or on a connected machine: hf download "
                                          f"{wanted} model.safetensors config.json") from None
            except ModelUnavailableError as e:
                if saliency_model:  # asked for explicitly: an error, not a silent substitute
                    raise
                notes.append(f"saliency head {wanted} unavailable ({e.message}); using the fallback saliency "
                             "(mean attention received in the last vision layer, mean-pooled frame features)")
        model, tokenizer = loading.load_pretrained(
            LlavaOnevisionForConditionalGeneration, ref, device=device, dtype=dtype,
            attn_implementation=attn_implementation, device_map=device_map)
        mean, std, norm_source = read_mean_std(ref)
        if head is not None:
            head = head.to(_device_of(model.model.vision_tower))
        return cls(model, tokenizer, ref, mean=mean, std=std, norm_source=norm_source, saliency_head=head,
                   saliency_source=source, warnings_=notes)

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, frames: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
        """uint8 (T,H,W,3) -> normalised (T,3,S,S) in the model dtype on the vision device.

        `device` picks where resize and normalisation run. Default: the vision device when it is a GPU (the uint8
        frames are uploaded, a quarter of the float bytes, and resized there), else the CPU. Both give the same
        values as the HF processor (see preprocess.resize_frames)."""
        x = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
        x = x.permute(0, 3, 1, 2)  # channels-last strides: the fast layout for the uint8 resize kernel
        if device is None:
            device = self.vision_device if self.vision_device.type == "cuda" else x.device
        x = x.to(device, non_blocking=True)
        x = normalize(resize_frames(x, (self.image_size, self.image_size)), self.mean, self.std)
        return x.to(device=self.vision_device, dtype=self.dtype).contiguous()

    # ------------------------------------------------------------------ features
    def _feature_layer_count(self) -> int:
        """How many encoder layers to run: hidden_states[k] of the stock model is the output of layer k."""
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ModelUnavailableError("checkpoints that concatenate several vision layers are not supported")
        n = len(self.vision.encoder.layers)
        return layer if layer >= 0 else n + 1 + layer

    @staticmethod
    def _attention_received(layer, h: torch.Tensor) -> torch.Tensor:
        """Mean attention each patch receives (over heads and queries) in `layer`, from its own q/k: (B,P).

        One head at a time: it runs for every video (HoliTom ranks tokens by it), and the float32 (B,heads,P,P)
        probabilities of a 32-frame chunk would take over 1 GB at once."""
        attn = layer.self_attn
        x = layer.layer_norm1(h)
        B, P, _ = x.shape
        q = attn.q_proj(x).view(B, P, attn.num_heads, attn.head_dim)
        k = attn.k_proj(x).view(B, P, attn.num_heads, attn.head_dim)
        total = torch.zeros((B, P), dtype=torch.float32, device=x.device)
        for head in range(attn.num_heads):
            scores = q[:, :, head] @ k[:, :, head].transpose(-1, -2)
            total += torch.softmax(scores.float() * attn.scale, dim=-1).mean(dim=1)
        return total / attn.num_heads

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, C) on the patch grid -> (B, n*n, C) with the stock bilinear 2x down-sampling."""
        B, P, C = x.shape
        g = self.patch_grid
        x = x.view(B, g, g, C).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.pooled_grid, self.pooled_grid), mode="bilinear")
        return x.permute(0, 2, 3, 1).reshape(B, -1, C)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, chunk_frames: int = 32) -> VideoFeatures:
        """(T,3,S,S) -> VideoFeatures: embeds (T,N,D), saliency (T,N), frame_features (T,Dg), newline (1,D),
        attn_received (T,N)."""
        core = self.model.model
        n_layers = self._feature_layer_count()
        layers = self.vision.encoder.layers[:n_layers]
        drop_first = self.config.vision_feature_select_strategy == "default"
        embeds, sal, glob, rec = [], [], [], []
        for start in range(0, pixels.shape[0], chunk_frames):
            x = pixels[start:start + chunk_frames]
            h = self.vision.embeddings(x)
            received = None
            for i, layer in enumerate(layers):
                if i == len(layers) - 1:
                    received = self._attention_received(layer, h)
                out = layer(h, None)
                h = out[0] if isinstance(out, tuple) else out
            if drop_first:
                h = h[:, 1:]
                received = None if received is None else received[:, 1:]
            proj = core.multi_modal_projector(h.to(_device_of(core.multi_modal_projector)))
            embeds.append(self._pool(proj))
            rec.append(self._pool(received[..., None])[..., 0])
            if self.saliency_head is not None:
                weights, pooled = self.saliency_head(h)
                sal.append(self._pool(weights.float()[..., None])[..., 0])
            else:
                pooled = h.float().mean(dim=1)
                sal.append(rec[-1])
            glob.append(pooled)
        emb = torch.cat(embeds)
        newline = core.image_newline.to(device=emb.device, dtype=emb.dtype)[None]
        saliency = torch.cat(sal).to(emb.device)
        return VideoFeatures(embeds=emb, saliency=saliency, frame_features=torch.cat(glob).to(emb.device),
                             extra_embeds=newline, grid=(self.pooled_grid, self.pooled_grid),
                             saliency_source=self.saliency_source, attn_received=torch.cat(rec).to(emb.device))

    # ------------------------------------------------------------------ prompt
    def build_prompt(self, question: str, system: str | None = None,
                     history: list[tuple[str, str]] | None = None) -> Prompt:
        """Chat-template prompt with one video placeholder; ids split around it. `history`: earlier (question,
        answer) turns of a conversation about the video, which then sits in the first user turn."""
        tok = self.tokenizer
        messages = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages += chat_turns(question, history)
        template = tok.chat_template or None
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                       chat_template=template or FALLBACK_TEMPLATE)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        where = (ids == self.video_token_id).nonzero().flatten()
        if where.numel() != 1:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                           chat_template=FALLBACK_TEMPLATE)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            where = (ids == self.video_token_id).nonzero().flatten()
        v = int(where[0])
        return Prompt(prefix_ids=ids[:v], suffix_ids=ids[v + 1:], text=text)

    def full_input_ids(self, prompt: Prompt, feats: VideoFeatures) -> torch.Tensor:
        """The unpruned prompt as the stock processor would build it: (1, L) ids with the expanded video run."""
        run = torch.full((feats.total_tokens,), self.video_token_id, dtype=torch.long)
        return torch.cat([prompt.prefix_ids, run, prompt.suffix_ids])[None]

    # ------------------------------------------------------------------ splice
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.model.get_input_embeddings()
        return emb(ids.to(self.embed_device))

    def assemble(self, prompt: Prompt, feats: VideoFeatures, kept_embeds: torch.Tensor,
                 kept_index: torch.Tensor) -> Assembled:
        """Splice kept video tokens (+ the newline) between the text embeddings, with ORIGINAL positions."""
        dev = self.embed_device
        pre = self.embed_ids(prompt.prefix_ids)
        suf = self.embed_ids(prompt.suffix_ids)
        video = torch.cat([kept_embeds.to(dev, pre.dtype), feats.extra_embeds.to(dev, pre.dtype)])
        v0 = pre.shape[0]
        grid_tokens = feats.num_frames * feats.tokens_per_frame
        n_extra = feats.extra_embeds.shape[0]
        after = v0 + grid_tokens
        pos = torch.cat([
            torch.arange(v0, device=dev),
            v0 + kept_index.to(dev, torch.long),
            after + torch.arange(n_extra, device=dev),
            after + n_extra + torch.arange(suf.shape[0], device=dev),
        ])
        full = after + n_extra + suf.shape[0]
        embeds = torch.cat([pre, video, suf])[None]
        return Assembled(inputs_embeds=embeds, position_ids=pos[None], full_length=full,
                         video_span=(v0, v0 + video.shape[0]))


Adapter = LlavaOnevisionAdapter  # what the registry (fastvid_cli.models.adapter_class) hands out for this family
