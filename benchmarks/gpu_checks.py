"""Correctness checks that need a GPU or torchvision (so CI cannot run them). Run on the GPU machine:

    python benchmarks/gpu_checks.py

1. Own preprocessing vs the HF LlavaOnevisionVideoProcessor (needs torchvision), CPU path and GPU-resize path.
2. Tiny LLaVA-OV on CUDA: ratio 1.0 through our splice == stock generate(input_ids, pixel_values_videos).
3. FastVID on CUDA keeps the same tokens as on CPU (fp32), and its output matches within fp tolerance.
4. Our layer-wise feature function == stock get_video_features on a full-size SigLIP-so400m tower (bf16).
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions, versions  # noqa: E402
from fastvid_cli.models.llava_onevision import resize_uint8  # noqa: E402
from fastvid_cli.pruning import fastvid  # noqa: E402
from fastvid_cli.tiny import save_llava_checkpoint, save_saliency_checkpoint  # noqa: E402

RESULTS: list[str] = []


def record(line: str) -> None:
    print(line, flush=True)
    RESULTS.append(line)


def check(name, fn):
    try:
        fn()
    except Exception:
        record(f"{name}: FAILED")
        traceback.print_exc()


def preprocessing():
    from transformers import LlavaOnevisionVideoProcessor

    torch.manual_seed(0)
    noise = torch.randint(0, 256, (8, 360, 640, 3), dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 360), torch.linspace(0, 1, 640), indexing="ij")
    smooth = (127.5 + 127.5 * torch.sin(6 * yy + 4 * xx)).round().to(torch.uint8)[None, :, :, None].expand(8, -1, -1, 3)
    tmp = Path(tempfile.mkdtemp())
    eng = Engine.load(str(save_llava_checkpoint(tmp / "m")), device="cuda", dtype="float32",
                      saliency_model="fallback", warmup=False)
    eng.adapter.image_size = 384  # compare at the real resolution
    vp = LlavaOnevisionVideoProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    for name, frames in (("noise", noise), ("smooth", smooth.contiguous())):
        hf = vp(videos=[frames.permute(0, 3, 1, 2)], return_tensors="pt")["pixel_values_videos"][0]
        ours = eng.adapter.preprocess(frames).cpu()
        cpu_u8 = resize_uint8(frames.permute(0, 3, 1, 2), (384, 384))
        gpu_u8 = resize_uint8(frames.permute(0, 3, 1, 2).cuda(), (384, 384)).cpu()
        record(f"preprocess[{name}]: max|HF processor - ours (CPU resize)| = {(hf - ours).abs().max().item():.3g}; "
               f"GPU-resize vs CPU-resize max diff = {(gpu_u8 - cpu_u8).abs().max().item():.0f} grey levels")


def tiny_keep_all_on_cuda():
    tmp = Path(tempfile.mkdtemp())
    eng = Engine.load(str(save_llava_checkpoint(tmp / "m")), device="cuda", dtype="float32",
                      saliency_model=str(save_saliency_checkpoint(tmp / "s")))
    a = eng.adapter
    frames = torch.randint(0, 256, (8, 90, 120, 3), dtype=torch.uint8)
    pixels = a.preprocess(frames)
    feats = a.encode(pixels)
    prompt = a.build_prompt("What happens?")
    ids = a.full_input_ids(prompt, feats).cuda()
    with torch.inference_mode():
        ref = a.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels[None],
                               max_new_tokens=16, do_sample=False)[0, ids.shape[1]:].tolist()
    ours_text = eng.ask("frames", "What happens?", clip=_fake_clip(frames), sample_ms=0.0,
                        prune=PruneOptions(method="none", ratio=1.0), gen=GenerationOptions(max_new_tokens=16)).answer
    ours, ref = ours_text, a.tokenizer.decode(ref, skip_special_tokens=True)
    record(f"tiny LLaVA-OV on CUDA: ratio 1.0 == stock generate token for token: {ref == ours}")
    res = fastvid(feats.embeds, feats.saliency, feats.frame_features, ratio=0.1, c=4)
    res_cpu = fastvid(feats.embeds.cpu(), feats.saliency.cpu(), feats.frame_features.cpu(), ratio=0.1, c=4)
    same = torch.equal(res.index.cpu(), res_cpu.index)
    diff = (res.embeds.cpu() - res_cpu.embeds).abs().max().item()
    record(f"fastvid CUDA vs CPU (fp32): same kept index {same}; max embed diff {diff:.2e}; "
           f"segments {res.segments} vs {res_cpu.segments}")
    r = eng.ask("frames", "What?", clip=_fake_clip(frames), sample_ms=0.0, gen=GenerationOptions(max_new_tokens=8),
                prune=PruneOptions(ratio=0.1, params=dict(c=4)), baseline=True)
    record(f"tiny ask on CUDA: kept {r.video_tokens_kept}/{r.video_tokens_total}, measured speedup "
           f"{r.prefill_speedup}, peak {r.peak_gpu_mem_mb} MB")


def _fake_clip(frames):
    from fastvid_cli.video import Clip

    T = frames.shape[0]
    return Clip(frames=frames.numpy(), indices=list(range(T)), timestamps=[i / 24 for i in range(T)], fps=24.0,
                duration=T / 24, total_frames=T, requested=T, path="frames", width=frames.shape[2],
                height=frames.shape[1], rotation=0, codec="raw")


def so400m_features():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    cfg = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                           num_hidden_layers=26, num_attention_heads=16, image_size=384, patch_size=14,
                           vision_use_head=False),
        text_config=dict(model_type="qwen2", vocab_size=1000, hidden_size=3584, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=28, num_key_value_heads=4),
        vision_feature_layer=-1, vision_feature_select_strategy="full", image_grid_pinpoints=[[384, 384]])
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    torch.set_default_dtype(torch.float32)
    from fastvid_cli.models import ModelRef
    from fastvid_cli.models.llava_onevision import LlavaOnevisionAdapter
    from fastvid_cli.tiny import byte_tokenizer

    a = LlavaOnevisionAdapter(model, byte_tokenizer(), ModelRef("x", None, True), mean=[0.5] * 3, std=[0.5] * 3,
                              norm_source="", saliency_head=None, saliency_source="fallback", warnings_=[])
    pixels = a.preprocess(torch.randint(0, 256, (32, 360, 640, 3), dtype=torch.uint8))
    with torch.inference_mode():
        ours = a.encode(pixels).embeds
        stock = model.model.get_video_features(pixels[None], vision_feature_layer=-1,
                                               vision_feature_select_strategy="full").pooler_output[0, : 32 * 196]
    diff = (ours.flatten(0, 1).float() - stock.float()).abs().max().item()
    record(f"so400m-shaped tower, 32 frames, bf16: max|ours - stock get_video_features| = {diff:.3g}")


if __name__ == "__main__":
    record(f"env: {torch.cuda.get_device_name(0)} | {versions()}")
    check("preprocessing", preprocessing)
    check("tiny on cuda", tiny_keep_all_on_cuda)
    check("so400m features", so400m_features)
