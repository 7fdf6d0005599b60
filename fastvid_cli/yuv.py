"""YUV 4:2:0 (NV12 / P010 planes, as NVDEC hands them out) -> RGB24 in torch, on whatever device the planes are.

The CPU sampling path converts with PyAV's ``to_ndarray(format="rgb24")``, i.e. FFmpeg's swscale with its defaults
(SWS_BILINEAR, no ACCURATE_RND). For 8-bit 4:2:0 frames of even height, swscale takes its unscaled fast path
(``ff_yuv2rgb_get_func_ptr``, on x86-64 the SSSE3 ``yuv420_rgb24`` kernel of libswscale/x86/yuv_2_rgb.asm):

    each 2x2 block of pixels shares one chroma sample (nearest, no interpolation);
    y = mulhi((Y << 3) - y_off, cy);  u = (U << 3) - 1024;  v = (V << 3) - 1024       mulhi(a, b) = (a * b) >> 16
    R = y + mulhi(v, crv);  G = y + (mulhi(u, cgu) + mulhi(v, cgv));  B = y + mulhi(u, cbu);  clamp 0..255

with 16-bit coefficients made by ``ff_yuv2rgb_c_init_tables`` from ``ff_yuv2rgb_coeffs[colorspace]``.
``swscale_coefficients`` rebuilds them from the matrix's Kr/Kb (the table's entries are these values rounded), and
``nv12_to_rgb`` runs exactly that integer arithmetic, so its output equals PyAV's rgb24 bit for bit on such frames
(tests/test_yuv.py measures 0 grey levels of difference for BT.601/709/2020, limited and full range).

Other frames (more than 8 bits, odd height) go through swscale's general scaler, whose chroma filtering we do not
reproduce; they are converted in float with bilinear (centre-sited) chroma, which differs from PyAV by about
1.9-2.0 grey levels on average and by up to ~85 at hard colour edges (numbers in tests/test_yuv.py).

The matrix follows the frame's colorspace tag the way swscale reads it (``sws_getCoefficients``): BT.709, FCC,
SMPTE 240M and BT.2020 when tagged, BT.601 for everything else, including untagged HD video (swscale does not guess
by resolution, and the CPU path's frames are what the GPU path must match). The range is full when the frame says
JPEG range, else limited.

    colour_spec(colorspace, color_range, bits) -> ColourSpec
    nv12_to_rgb(y (H,W), uv (h,w,2), spec, out=None) -> uint8 (H,W,3)      y/uv: uint8, or uint16 with ``bits`` > 8
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ColourSpec", "colour_spec", "swscale_coefficients", "nv12_to_rgb", "MATRICES"]

# (Kr, Kb) of each luma matrix.
MATRICES: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "fcc": (0.30, 0.11),
    "smpte240m": (0.212, 0.087),
    "bt2020": (0.2627, 0.0593),
}
# AVColorSpace values (libavutil/pixfmt.h) with a matrix of their own in swscale; every other value is BT.601
# (unspecified 2, BT470BG 5, SMPTE170M 6, reserved, RGB 0).
_BY_COLORSPACE = {1: "bt709", 4: "fcc", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_AVCOL_RANGE_JPEG = 2


@dataclass(frozen=True)
class ColourSpec:
    """How to read a frame's YUV samples: the matrix name (a key of MATRICES), full (JPEG) or limited (MPEG) range,
    and the significant bits of a sample (8; 10 for P010; 16 for P016, whose 12-bit content fills the top bits)."""

    matrix: str
    full_range: bool
    bits: int = 8


def colour_spec(colorspace: int | None, color_range: int | None, bits: int = 8) -> ColourSpec:
    """The ColourSpec of a frame from its AVColorSpace / AVColorRange tags (PyAV's ``frame.colorspace`` and
    ``frame.color_range``), chosen as swscale chooses them."""
    return ColourSpec(_BY_COLORSPACE.get(int(colorspace or 0), "bt601"),
                      int(color_range or 0) == _AVCOL_RANGE_JPEG, int(bits))


def _round_int16(f: int) -> int:
    """libswscale's roundToInt16: (f + 2**15) >> 16, clipped to int16."""
    return max(-0x8000, min(0x7FFF, (f + (1 << 15)) >> 16))


def _div_trunc(a: int, b: int) -> int:
    """C integer division (towards zero) of possibly negative ``a``."""
    q = abs(a) // b
    return q if a >= 0 else -q


def swscale_coefficients(spec: ColourSpec) -> tuple[int, int, int, int, int, int]:
    """(cy, y_off, crv, cbu, cgu, cgv): the int16 constants of swscale's x86 yuv2rgb kernel for ``spec``
    (ff_yuv2rgb_c_init_tables with brightness 0, contrast and saturation 1)."""
    kr, kb = MATRICES[spec.matrix]
    kg = 1.0 - kr - kb
    s = 65536 * 255 / 224  # ff_yuv2rgb_coeffs holds limited-range chroma gains in 16.16
    crv, cbu = round(2 * (1 - kr) * s), round(2 * (1 - kb) * s)
    cgu, cgv = -round(2 * kb * (1 - kb) / kg * s), -round(2 * kr * (1 - kr) / kg * s)
    cy, oy = 1 << 16, 0
    if not spec.full_range:
        cy, oy = cy * 255 // 219, 16 << 16
    else:
        crv, cbu, cgu, cgv = (_div_trunc(c * 224, 255) for c in (crv, cbu, cgu, cgv))
    return (_round_int16(cy << 13), _round_int16(oy << 3), _round_int16(crv << 13), _round_int16(cbu << 13),
            _round_int16(cgu << 13), _round_int16(cgv << 13))


def nv12_to_rgb(y: torch.Tensor, uv: torch.Tensor, spec: ColourSpec, out: torch.Tensor | None = None) -> torch.Tensor:
    """One frame's luma (H, W) and interleaved chroma (ceil(H/2), ceil(W/2), 2) planes -> uint8 (H, W, 3) RGB.

    Any strides (NVDEC planes are pitched). A chroma plane one row or column short (what DLPack exports of an
    odd-sized CUDA frame, H//2 x W//2) is completed by repeating its last row / column. ``out``: an uint8 (H, W, 3)
    view to write into (e.g. one slot of the clip's tensor); returned."""
    H, W = int(y.shape[0]), int(y.shape[1])
    ch, cw = (H + 1) // 2, (W + 1) // 2
    if uv.shape[0] < ch or uv.shape[1] < cw:
        uv = F.pad(uv.permute(2, 0, 1)[None].float(), (0, cw - uv.shape[1], 0, ch - uv.shape[0]),
                   mode="replicate")[0].permute(1, 2, 0).to(uv.dtype)
    if spec.bits == 8 and H % 2 == 0 and y.dtype == torch.uint8:
        rgb = _swscale_fast(y, uv, spec)
    else:
        rgb = _float_bilinear(y, uv, spec)
    if out is None:
        return rgb
    out.copy_(rgb)
    return out


def _swscale_fast(y: torch.Tensor, uv: torch.Tensor, spec: ColourSpec) -> torch.Tensor:
    """swscale's unscaled 8-bit kernel (see the module doc), in int32: bit-exact."""
    cy, yo, crv, cbu, cgu, cgv = swscale_coefficients(spec)
    H, W = y.shape
    c = uv.to(torch.int32).mul_(8).sub_(1024)  # (h, w, 2): chroma - 128, times 8
    u, v = c[..., 0], c[..., 1]
    # The three chroma terms at chroma resolution, then repeated over each 2x2 block (nearest, as swscale).
    terms = torch.stack([(v * crv) >> 16, ((u * cgu) >> 16) + ((v * cgv) >> 16), (u * cbu) >> 16], dim=-1)
    terms = terms.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)[:H, :W]
    luma = ((y.to(torch.int32) * 8 - yo) * cy) >> 16
    return (luma[..., None] + terms).clamp_(0, 255).to(torch.uint8)


def _float_bilinear(y: torch.Tensor, uv: torch.Tensor, spec: ColourSpec) -> torch.Tensor:
    """The exact matrix in float32 with bilinear, centre-sited chroma upsampling (2x, edges clamped)."""
    H, W = y.shape
    scale = float(1 << (spec.bits - 8))  # samples in units of an 8-bit level
    shift = 16 - spec.bits if y.dtype == torch.int16 or y.dtype == torch.uint16 else 0
    yf = _as_float(y, shift) / scale
    cf = _as_float(uv, shift) / scale - 128.0
    cf = F.interpolate(cf.permute(2, 0, 1)[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    cf = cf[:, :H, :W]
    u, v = cf[0], cf[1]
    kr, kb = MATRICES[spec.matrix]
    kg = 1.0 - kr - kb
    if not spec.full_range:
        yf = (yf - 16.0) * (255.0 / 219.0)
        u, v = u * (255.0 / 224.0), v * (255.0 / 224.0)
    r = yf + (2 * (1 - kr)) * v
    g = yf - (2 * kb * (1 - kb) / kg) * u - (2 * kr * (1 - kr) / kg) * v
    b = yf + (2 * (1 - kb)) * u
    return torch.stack([r, g, b], dim=-1).round_().clamp_(0, 255).to(torch.uint8)


def _as_float(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Samples as float32; P010/P016 keep theirs in the top bits of 16 (``shift`` = 16 - bits drops the rest)."""
    if x.dtype == torch.uint16:  # few kernels take uint16: reinterpret as int16 and undo the sign
        x = x.view(torch.int16).to(torch.int32) & 0xFFFF
    else:
        x = x.to(torch.int32)
    if shift:
        x = x >> shift
    return x.to(torch.float32)
