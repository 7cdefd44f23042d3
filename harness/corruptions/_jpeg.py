"""Baseline JPEG round trip (encode at a quality, decode) on batches of uint8 RGB images,
following the libjpeg(-turbo) pipeline that PIL's ``save(format="JPEG", quality=q)`` and
``Image.open`` run:

* encoder: fixed-point RGB -> YCbCr (jccolor.c), 4:2:0 chroma by 2x2 averaging with the
  alternating 1, 2 bias (jcsample.c), 8x8 DCT, quantisation with the IJG tables scaled by
  quality (jcparam.c), rounding half away from zero (jcdctmgr.c);
* decoder: dequantisation, inverse DCT, "fancy" triangular chroma upsampling with its 8/7
  rounding biases and replicated edges (jdsample.c), fixed-point YCbCr -> RGB (jdcolor.c).

All arithmetic is integer, as libjpeg's, so results are exact on every device.
"""

from __future__ import annotations

import torch

_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32

_SCALEBITS = 16
_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


def quant_table(quality: int, luminance: bool) -> torch.Tensor:
    """The 8x8 quantisation table libjpeg uses at ``quality`` (baseline, values 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = _LUMA if luminance else _CHROMA
    vals = [min(max((b * scale + 50) // 100, 1), 255) for b in base]
    return torch.tensor(vals, dtype=torch.int64).view(8, 8)


# libjpeg's scaled integer DCTs (jfdctint.c / jidctint.c, "JDCT_ISLOW", the default in both
# directions). They are reproduced bit for bit because re-encoding images that were themselves
# JPEG-decoded puts many coefficients exactly on a quantisation rounding tie, which only the
# integer arithmetic decides as libjpeg does.
_CONST_BITS = 13
_PASS1_BITS = 2
_F0298, _F0390, _F0541, _F0765 = 2446, 3196, 4433, 6270
_F0899, _F1175, _F1501, _F1847 = 7373, 9633, 12299, 15137
_F1961, _F2053, _F2562, _F3072 = 16069, 16819, 20995, 25172


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n


def _odd_part(t4, t5, t6, t7):
    """The shared rotation of the odd terms (both DCT directions)."""
    z1, z2, z3, z4 = t4 + t7, t5 + t6, t4 + t6, t5 + t7
    z5 = (z3 + z4) * _F1175
    t4, t5, t6, t7 = t4 * _F0298, t5 * _F2053, t6 * _F3072, t7 * _F1501
    z1, z2, z3, z4 = z1 * -_F0899, z2 * -_F2562, z3 * -_F1961 + z5, z4 * -_F0390 + z5
    return t4 + z1 + z3, t5 + z2 + z4, t6 + z2 + z3, t7 + z1 + z4


def _fdct_pass(d: torch.Tensor, first: bool) -> torch.Tensor:
    """One 1-D pass of jpeg_fdct_islow along the last axis."""
    d0, d1, d2, d3, d4, d5, d6, d7 = d.unbind(-1)
    t0, t7, t1, t6 = d0 + d7, d0 - d7, d1 + d6, d1 - d6
    t2, t5, t3, t4 = d2 + d5, d2 - d5, d3 + d4, d3 - d4
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS
    if first:
        o0, o4 = (t10 + t11) << _PASS1_BITS, (t10 - t11) << _PASS1_BITS
    else:
        o0, o4 = _descale(t10 + t11, _PASS1_BITS), _descale(t10 - t11, _PASS1_BITS)
    z1 = (t12 + t13) * _F0541
    o2 = _descale(z1 + t13 * _F0765, shift)
    o6 = _descale(z1 - t12 * _F1847, shift)
    o7, o5, o3, o1 = (_descale(v, shift) for v in _odd_part(t4, t5, t6, t7))
    return torch.stack((o0, o1, o2, o3, o4, o5, o6, o7), -1)


def _idct_pass(d: torch.Tensor, first: bool) -> torch.Tensor:
    """One 1-D pass of jpeg_idct_islow along the last axis."""
    d0, d1, d2, d3, d4, d5, d6, d7 = d.unbind(-1)
    z1 = (d2 + d6) * _F0541
    t2, t3 = z1 - d6 * _F1847, z1 + d2 * _F0765
    t0, t1 = (d0 + d4) << _CONST_BITS, (d0 - d4) << _CONST_BITS
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = _odd_part(d7, d5, d3, d1)
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
    outs = (t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3)
    return torch.stack([_descale(v, shift) for v in outs], -1)


def fdct_islow(blocks: torch.Tensor) -> torch.Tensor:
    """Level-shifted int64 (..., 8, 8) samples -> DCT coefficients scaled by 8 (rows, then
    columns, as libjpeg)."""
    return _fdct_pass(_fdct_pass(blocks, True).transpose(-1, -2), False).transpose(-1, -2)


def idct_islow(coef: torch.Tensor) -> torch.Tensor:
    """Dequantised int64 (..., 8, 8) coefficients -> samples before the +128 level shift
    (columns, then rows, as libjpeg)."""
    return _idct_pass(_idct_pass(coef.transpose(-1, -2), True).transpose(-1, -2), False)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    n, h, w = plane.shape
    return plane.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    n, bh, bw, _, _ = blocks.shape
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise (round half away from zero), dequantise, IDCT, clamp."""
    q = table.to(plane.device, torch.int64)
    coef = fdct_islow(_blocks(plane.long() - 128))
    q8 = q * 8
    qc = torch.sign(coef) * ((coef.abs() + (q8 >> 1)) // q8)
    return (_unblocks(idct_islow(qc * q)) + 128).clamp(0, 255)


def _fancy_upsample(c: torch.Tensor) -> torch.Tensor:
    """jdsample.c h2v2_fancy_upsample of (N, h, w) int64 -> (N, 2h, 2w)."""
    above = torch.cat((c[:, :1], c[:, :-1]), 1)
    below = torch.cat((c[:, 1:], c[:, -1:]), 1)
    colsums = torch.stack((3 * c + above, 3 * c + below), 2).flatten(1, 2)  # (N, 2h, w)
    left = torch.cat((colsums[:, :, :1], colsums[:, :, :-1]), 2)
    right = torch.cat((colsums[:, :, 1:], colsums[:, :, -1:]), 2)
    even = (3 * colsums + left + 8) >> 4
    odd = (3 * colsums + right + 7) >> 4
    return torch.stack((even, odd), 3).flatten(2, 3)


def jpeg_roundtrip(x_u8: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode (N, 3, H, W) uint8 RGB at ``quality`` with 4:2:0 chroma, decode; returns uint8.
    H and W must be multiples of 16 (CIFAR's 32 is)."""
    n, _, h, w = x_u8.shape
    if h % 16 or w % 16:
        raise ValueError("jpeg_roundtrip needs H and W divisible by 16")
    r, g, b = x_u8.long().unbind(1)
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + _HALF) >> _SCALEBITS
    offset = (128 << _SCALEBITS) + _HALF - 1
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset) >> _SCALEBITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset) >> _SCALEBITS

    bias = torch.tensor([1, 2], device=x_u8.device).repeat(w // 4).view(1, 1, w // 2)

    def down(p):
        s = p[:, 0::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 0::2] + p[:, 1::2, 1::2]
        return (s + bias) >> 2

    y = _code_plane(y, quant_table(quality, True))
    cb = _fancy_upsample(_code_plane(down(cb), quant_table(quality, False))) - 128
    cr = _fancy_upsample(_code_plane(down(cr), quant_table(quality, False))) - 128

    r = y + ((_fix(1.40200) * cr + _HALF) >> _SCALEBITS)
    g = y + ((-_fix(0.34414) * cb + _HALF - _fix(0.71414) * cr) >> _SCALEBITS)
    b = y + ((_fix(1.77200) * cb + _HALF) >> _SCALEBITS)
    return torch.stack((r, g, b), 1).clamp(0, 255).to(torch.uint8)
