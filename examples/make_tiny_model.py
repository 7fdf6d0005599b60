"""Write a tiny random LLaVA-OneVision checkpoint (and a tiny SigLIP saliency head) to try fastvid offline.

    python examples/make_tiny_model.py /tmp/fastvid-tiny
    fastvid ask ../shared/videos/bikes.mp4 "What happens?" --model /tmp/fastvid-tiny/llava-ov \
        --saliency-model /tmp/fastvid-tiny/siglip-head --device cpu --max-new-tokens 16

The answer of random weights is gibberish; everything else (frames, pruning, token counts, timings) is real.
"""

import sys
from pathlib import Path

from fastvid_cli.tiny import save_llava_checkpoint, save_saliency_checkpoint

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fastvid-tiny")
    save_llava_checkpoint(out / "llava-ov")
    save_saliency_checkpoint(out / "siglip-head")
    print(f"wrote {out / 'llava-ov'} and {out / 'siglip-head'}")
