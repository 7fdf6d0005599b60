"""Correctness checks that need a GPU or torchvision (so CI cannot run them). Run on the GPU machine:

    python benchmarks/gpu_checks.py

1. Own preprocessing vs the HF LlavaOnevisionVideoProcessor (needs torchvision), CPU path and GPU-resize path;
   GPU vs CPU preprocessing on decoded real frames (max difference, expected 0) and the time of each.
2. Tiny LLaVA-OV on CUDA: ratio 1.0 through our splice == stock generate(input_ids, pixel_values_videos).
3. FastVID on CUDA keeps the same tokens as on CPU (fp32), and its output matches within fp tolerance.
4. Our layer-wise feature function == stock get_video_features on a full-size SigLIP-so400m tower (bf16).
5. Qwen-VL: own preprocessing vs the HF Qwen2VL / Qwen3VL video processors (max difference), prompt expansion and
   temporal inputs vs the HF Qwen2.5-VL / Qwen3-VL processors, tiny models on CUDA (ratio 1.0 == stock generate,
   eager and CUDA-graph decode; CUDA vs CPU kept set; saliency with sdpa vs eager attention).
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvid_cli.engine import Engine, GenerationOptions, PruneOptions, versions  # noqa: E402
from fastvid_cli.preprocess import resize_frames  # noqa: E402
from fastvid_cli.pruning.fastvid import fastvid  # noqa: E402
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
        ours = eng.adapter.preprocess(frames, device="cpu").cpu()
        ours_gpu = eng.adapter.preprocess(frames).cpu()  # the default on a CUDA engine: resize on the GPU
        cpu_u8 = resize_frames(frames.permute(0, 3, 1, 2), (384, 384))
        gpu_u8 = resize_frames(frames.permute(0, 3, 1, 2).cuda(), (384, 384)).cpu()
        record(f"preprocess[{name}]: max|HF processor - ours (CPU resize)| = {(hf - ours).abs().max().item():.3g}; "
               f"max|HF processor - ours (GPU resize)| = {(hf - ours_gpu).abs().max().item():.3g}; "
               f"GPU-resize vs CPU-resize max diff = {(gpu_u8 - cpu_u8).abs().max().item():.0f} grey levels")


def gpu_preprocessing_real_frames():
    """CPU (torch's uint8 kernel) vs GPU (fastvid_cli.preprocess matmul resize) on decoded frames of real clips,
    resized to SigLIP's 384x384 and to a Qwen-style 448x784; also the time of each path for 32 frames."""
    import time

    from fastvid_cli.preprocess import normalize, resize_bicubic_aa
    from fastvid_cli.video import sample_frames

    repo = Path(__file__).resolve().parents[1]
    shared = repo.parent / "shared" / "videos"
    clips = sorted(p for p in shared.glob("*") if p.suffix in (".mp4", ".webm")) + [repo / "examples" / "demo.mp4"]
    torch.manual_seed(0)
    sets = [(p.name, torch.from_numpy(sample_frames(str(p), 16).frames)) for p in clips if p.is_file()]
    sets.append(("noise 720p", torch.randint(0, 256, (16, 720, 1280, 3), dtype=torch.uint8)))
    for name, frames in sets:
        x = frames.permute(0, 3, 1, 2)
        diffs = []
        for size in ((384, 384), (448, 784)):
            cpu = resize_frames(x, size)
            gpu = resize_bicubic_aa(x.cuda(), size).cpu()
            diffs.append(f"{size[0]}x{size[1]}: {(gpu - cpu).abs().max().item():.0f}")
        cpu_n = normalize(resize_frames(x, (384, 384)), [0.5] * 3, [0.5] * 3)
        gpu_n = normalize(resize_bicubic_aa(x.cuda(), (384, 384)), [0.5] * 3, [0.5] * 3).cpu()
        record(f"GPU vs CPU preprocessing [{name}, {tuple(frames.shape[1:3])}]: max grey-level diff "
               f"{'; '.join(diffs)}; normalised max diff {(gpu_n - cpu_n).abs().max().item():.3g}")
    x = sets[-1][1][:16].repeat(2, 1, 1, 1).permute(0, 3, 1, 2)  # 32 frames of 720p
    for label, fn in (("CPU uint8 kernel", lambda: resize_frames(x, (384, 384))),
                      ("GPU upload + matmul resize", lambda: resize_bicubic_aa(x.cuda(), (384, 384)))):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        record(f"resize 32 frames 720p -> 384x384, {label}: {(time.perf_counter() - t) / 5 * 1e3:.1f} ms")


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


# ---------------------------------------------------------------------------------------------- Qwen-VL
def _qwen_engine(kind: str, attn: str = "sdpa") -> Engine:
    from fastvid_cli.tiny import save_qwen_checkpoint

    folder = save_qwen_checkpoint(Path(tempfile.mkdtemp()) / kind, kind)
    return Engine.load(str(folder), device="cuda", dtype="float32", attn_implementation=attn, warmup=False)


def _qwen_video_processor(kind: str, adapter, n_frames: int):
    """The HF video processor of `kind`, set to the frame size our budget gives `n_frames` frames (the Qwen3 one
    budgets all frames together, so its bounds are the per-frame ones times the frame count, n even)."""
    from transformers import Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

    from fastvid_cli.models import qwen_vl as Q

    lo, hi = Q.frame_pixel_bounds(n_frames, adapter.factor, adapter.budget)
    common = dict(image_mean=adapter.mean, image_std=adapter.std, patch_size=adapter.patch, temporal_patch_size=2,
                  merge_size=2)
    if kind.startswith("qwen3"):
        return Qwen3VLVideoProcessor(size={"shortest_edge": lo * n_frames, "longest_edge": hi * n_frames}, **common)
    return Qwen2VLVideoProcessor(size={"shortest_edge": lo, "longest_edge": hi}, **common)


def qwen_preprocessing():
    """Own Qwen preprocessing (smart_resize size, bicubic+antialias on uint8, fused rescale+normalise, patchify)
    vs the HF Qwen2VLVideoProcessor (Qwen2/2.5-VL) and Qwen3VLVideoProcessor on the same frames: grids and the
    max |difference| of pixel_values_videos, with the resize on the CPU and on the GPU."""
    from fastvid_cli.models import qwen_vl as Q
    from fastvid_cli.video import sample_frames

    torch.manual_seed(0)
    noise = torch.randint(0, 256, (8, 360, 640, 3), dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 360), torch.linspace(0, 1, 640), indexing="ij")
    smooth = (127.5 + 127.5 * torch.sin(6 * yy + 4 * xx)).round().to(torch.uint8)[None, :, :, None].expand(8, -1, -1, 3)
    sets = [("noise", noise), ("smooth", smooth.contiguous()), ("odd count (7)", noise[:7])]
    repo = Path(__file__).resolve().parents[1]
    for clip_path in sorted((repo.parent / "shared" / "videos").glob("*.mp4"))[:2]:
        sets.append((clip_path.name, torch.from_numpy(sample_frames(str(clip_path), Q.frame_plan(16)).frames)))
    for kind in ("qwen2_5_vl", "qwen3_vl"):
        a = _qwen_engine(kind).adapter
        for name, frames in sets:
            if kind == "qwen3_vl" and frames.shape[0] % 2:
                continue  # its whole-clip budget rounds the frame count: compared on even counts only
            proc = _qwen_video_processor(kind, a, frames.shape[0])
            hf = proc(videos=[frames.permute(0, 3, 1, 2)], return_tensors="pt", do_sample_frames=False,
                      cap_pixels_per_frame=False)
            cpu = a.preprocess(frames, device="cpu")
            gpu = a.preprocess(frames)
            ref = hf["pixel_values_videos"].float()
            same_grid = hf["video_grid_thw"].tolist() == [list(cpu.grid)] == [list(gpu.grid)]
            d_cpu = (ref - cpu.values.float().cpu()).abs().max().item() if same_grid else float("nan")
            d_gpu = (ref - gpu.values.float().cpu()).abs().max().item() if same_grid else float("nan")
            record(f"qwen preprocess [{kind}, {name}, {tuple(frames.shape[:3])}]: grid HF "
                   f"{hf['video_grid_thw'].tolist()} ours {list(cpu.grid)}; max|HF - ours| CPU resize {d_cpu:.3g}, "
                   f"GPU resize {d_gpu:.3g}")


def qwen_processor_end_to_end():
    """The HF processors' prompt expansion and temporal inputs vs ours, same frames and frame indices: input ids
    (Qwen3-VL: per-patch "<t seconds>" blocks), mm_token_type_ids, second_per_grid_ts (Qwen2.5-VL), pixels."""
    import transformers
    from transformers.video_utils import VideoMetadata

    from fastvid_cli.models import qwen_vl as Q

    torch.manual_seed(1)
    total, rate = 48, 24.0
    indices = Q.frame_plan(16)(total, rate)
    frames = torch.randint(0, 256, (16, 90, 120, 3), dtype=torch.uint8)
    for kind, proc_name in (("qwen2_5_vl", "Qwen2_5_VLProcessor"), ("qwen3_vl", "Qwen3VLProcessor")):
        a = _qwen_engine(kind).adapter
        pixels = a.preprocess(frames, indices=indices, video_fps=rate, total_frames=total, device="cpu")
        feats = a.encode(pixels)
        prompt = a.build_prompt("What happens?")
        ours = a.full_input_ids(prompt, feats)
        image_proc = transformers.Qwen2VLImageProcessor(patch_size=a.patch, merge_size=2)
        proc = getattr(transformers, proc_name)(image_processor=image_proc, tokenizer=a.tokenizer,
                                                video_processor=_qwen_video_processor(kind, a, 16),
                                                chat_template=a.template)
        enc = proc(text=[prompt.text], videos=[frames.permute(0, 3, 1, 2)], return_tensors="pt",
                   video_metadata=[VideoMetadata(total_num_frames=total, fps=rate, frames_indices=indices)],
                   do_sample_frames=False, cap_pixels_per_frame=False)
        same_ids = torch.equal(enc["input_ids"], ours)
        same_mm = torch.equal(enc["mm_token_type_ids"].long(), a.mm_token_type_ids(ours)) if "mm_token_type_ids" \
            in enc else "absent"
        extra = ""
        if "second_per_grid_ts" in enc:
            extra = (f"; second_per_grid_ts HF {torch.as_tensor(enc['second_per_grid_ts']).tolist()} ours "
                     f"{a.rope_kwargs(feats)['second_per_grid_ts'].tolist()}")
        diff = (enc["pixel_values_videos"].float() - pixels.values.float().cpu()).abs().max().item()
        record(f"qwen processor end to end [{kind}]: input_ids equal {same_ids} ({enc['input_ids'].shape[1]} vs "
               f"{ours.shape[1]}); mm_token_type_ids equal {same_mm}; max|pixels| diff {diff:.3g}{extra}")


def qwen_tiny_on_cuda():
    """Per family on CUDA: ratio 1.0 == stock generate token for token (eager, CUDA-graph and fused decode), the
    pruned kept set equals the CPU one, and the last-block saliency is the same with sdpa and eager attention."""
    from fastvid_cli.decoding import Sampling, StaticDecoder, decode, new_cache, prefill
    from fastvid_cli.fast_decode import FusedDecoder
    from fastvid_cli.pruning.fastvid_qwen import fastvid_qwen

    torch.manual_seed(2)
    frames = torch.randint(0, 256, (16, 90, 120, 3), dtype=torch.uint8)
    for kind in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        eng = _qwen_engine(kind)
        a = eng.adapter
        pixels = a.preprocess(frames, indices=list(range(0, 48, 3)), video_fps=24.0, total_frames=48)
        feats = a.encode(pixels)
        prompt = a.build_prompt("What happens?")
        inputs = a.generate_inputs(prompt, feats, pixels)
        with torch.inference_mode():
            ref = a.model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        flat = feats.embeds.flatten(0, 1)
        asm = a.assemble(prompt, feats, flat, torch.arange(flat.shape[0]))
        got = {}
        decoders = {"eager": decode, "cuda-graph": StaticDecoder(a.model).decode,
                    "fused": FusedDecoder(a.model).decode}
        for mode, fn in decoders.items():
            cache = new_cache(a.model)
            logits = prefill(a.model, asm.inputs_embeds, asm.position_ids, cache, asm.prefill_extra())
            res = fn(a.model, logits, cache, asm.next_position, Sampling(max_new_tokens=16))
            got[mode] = (res.token_ids == ref.tolist(), res.mode)
        pruned = fastvid_qwen(feats.embeds, feats.saliency, feats.frame_features, 0.27, c=4)
        pruned_cpu = fastvid_qwen(feats.embeds.cpu(), feats.saliency.cpu(), feats.frame_features.cpu(), 0.27, c=4)
        eager = _qwen_engine(kind, attn="eager").adapter
        eager.model.load_state_dict(a.model.state_dict())
        sal_eager = eager.encode(eager.preprocess(frames)).saliency
        sal_diff = (sal_eager - a.encode(a.preprocess(frames)).saliency).abs().max().item()
        record(f"tiny {kind} on CUDA: ratio 1.0 == stock generate: eager {got['eager']}, static {got['cuda-graph']}, "
               f"fused {got['fused']}; "
               f"FastVID-Qwen kept {pruned.kept}/{flat.shape[0]}, same as CPU "
               f"{torch.equal(pruned.index.cpu(), pruned_cpu.index)}; "
               f"saliency sdpa vs eager max diff {sal_diff:.2e}")


if __name__ == "__main__":
    record(f"env: {torch.cuda.get_device_name(0)} | {versions()}")
    check("preprocessing", preprocessing)
    check("GPU preprocessing on real frames", gpu_preprocessing_real_frames)
    check("tiny on cuda", tiny_keep_all_on_cuda)
    check("so400m features", so400m_features)
    check("qwen preprocessing", qwen_preprocessing)
    check("qwen processor end to end", qwen_processor_end_to_end)
    check("qwen tiny on cuda", qwen_tiny_on_cuda)
