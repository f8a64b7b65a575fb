"""The C++ CPU backend against an independent float64 oracle, on small odd shapes.

The oracle is the torch backend run in float64 on the same (already rounded) inputs. The tolerance
rule: the C++ result's max error against the oracle is at most ``FACTOR`` times the error of the torch
backend run in the same dtype, plus a small floor relative to the oracle's magnitude (``FLOOR``), for
cases where plain PyTorch happens to be exact. Outputs written through ``out=`` start as NaN, so an
element the kernel never wrote fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vaekernels import BackendUnavailable, ops, use_backend
from vaekernels.backends import cpp
from vaekernels.backends import torch as torch_backend

if cpp.available():
    pytest.skip(cpp.available(), allow_module_level=True)
from vaekernels import _C  # noqa: E402

CL = torch.channels_last_3d
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
# About twice plain PyTorch's error: the C++ ops round at different places (fused bias/residual,
# summed phase weights in upsample_conv2d), never more often than the reference does.
FACTOR = 2.0
# Relative to max|oracle|: well under one rounding step of the dtype (fp32 2^-24, bf16 2^-9 = 2e-3).
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3}


def assert_close_to_oracle(actual, reference, oracle, dtype):
    assert actual.dtype == dtype and actual.shape == oracle.shape
    assert not torch.isnan(actual).any(), "NaN in the result: an element was never written"
    err = (actual.double() - oracle).abs().max().item()
    ref_err = (reference.double() - oracle).abs().max().item()
    floor = FLOOR[dtype] * oracle.abs().max().item()
    assert err <= FACTOR * ref_err + floor, f"error {err:.3g} vs torch backend {ref_err:.3g} (+ floor {floor:.3g})"


def randn(*shape, dtype, scale=1.0, channels_last=True):
    t = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
    return t.contiguous(memory_format=CL) if channels_last and t.dim() == 5 else t


def poisoned(*shape, dtype, channels_last=True):
    t = torch.full(shape, float("nan"), dtype=dtype)
    return t.contiguous(memory_format=CL) if channels_last else t


def f64(t):
    return None if t is None else t.double()


# ---------------------------------------------------------------------------------------------
# causal_conv3d
# ---------------------------------------------------------------------------------------------
# (cin, cout, T, H, W, kernel, stride, padding, cache frames, cache placement, bias, residual)
# placement "joined": the cache lies right in front of x in one buffer (the engine's layout);
# "apart": a separate tensor (the time-downsampler's pending frames, or a caller that did not join).
CONV_CASES = {
    "3x3x3_T1_nocache": (5, 13, 1, 7, 9, (3, 3, 3), (1, 1, 1), (1, 1, 1), 0, None, True, False),
    "3x3x3_cache1_apart": (13, 20, 3, 7, 9, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, "apart", True, False),
    "3x3x3_cache1_joined": (13, 20, 2, 5, 11, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, "joined", False, True),
    "3x3x3_cache2_joined_residual": (13, 13, 3, 7, 9, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, "joined", True, True),
    "3x3x3_cache2_apart_residual": (20, 5, 1, 9, 7, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, "apart", True, True),
    "time_stride2_cache1": (13, 13, 4, 7, 9, (3, 1, 1), (2, 1, 1), (0, 0, 0), 1, "apart", True, False),
    "time_stride2_nocache": (20, 20, 5, 5, 7, (3, 1, 1), (2, 1, 1), (0, 0, 0), 0, None, True, False),
    "time_pad1_cache2_joined": (13, 26, 3, 7, 9, (3, 1, 1), (1, 1, 1), (1, 0, 0), 2, "joined", True, False),
    # even input channels: bf16 on AMX takes these (cache apart, zero frames, residual; 72 output channels: a
    # 64-column block and a partial one) to the tiles' GEMMs
    "time_stride2_cache1_residual": (20, 72, 4, 7, 9, (3, 1, 1), (2, 1, 1), (0, 0, 0), 1, "apart", True, True),
    "time_pad1_cache1_apart_residual": (20, 26, 3, 7, 9, (3, 1, 1), (1, 1, 1), (1, 0, 0), 1, "apart", False, True),
    "down_4x4_stride2": (13, 13, 3, 9, 11, (1, 4, 4), (1, 2, 2), (0, 1, 1), 0, None, True, False),
    "down_3x3_stride2_residual": (20, 13, 2, 8, 7, (1, 3, 3), (1, 2, 2), (0, 1, 1), 0, None, False, True),
    "pointwise_residual": (13, 20, 3, 7, 9, (1, 1, 1), (1, 1, 1), (0, 0, 0), 0, None, True, True),
    "pointwise_nobias": (20, 5, 1, 7, 9, (1, 1, 1), (1, 1, 1), (0, 0, 0), 0, None, False, False),
}


def conv_inputs(case, dtype, channels_last=True):
    cin, cout, t, h, w, kernel, stride, padding, frames, placement, has_bias, has_residual = CONV_CASES[case]
    torch.manual_seed(list(CONV_CASES).index(case))
    if placement == "joined":
        buf = randn(1, cin, frames + t, h, w, dtype=dtype)
        cache, x = buf[:, :, :frames], buf[:, :, frames:]
    else:
        x = randn(1, cin, t, h, w, dtype=dtype, channels_last=channels_last)
        cache = randn(1, cin, frames, h, w, dtype=dtype) if placement == "apart" else None
    weight = randn(cout, cin, *kernel, dtype=dtype, scale=(cin * kernel[0] * kernel[1] * kernel[2]) ** -0.5)
    weight = weight.contiguous()
    bias = randn(cout, dtype=dtype) if has_bias else None
    shape = ops.conv_output_shape(x.shape, weight.shape, frames, stride, padding)
    residual = randn(*shape, dtype=dtype) if has_residual else None
    return x, weight, bias, cache, stride, padding, residual


def conv_oracle(x, weight, bias, cache, stride, padding, residual):
    return torch_backend.causal_conv3d(f64(x), f64(weight), f64(bias), f64(cache), stride, padding, f64(residual),
                                       None)


@DTYPES
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_causal_conv3d(case, dtype):
    args = conv_inputs(case, dtype)
    y = cpp.causal_conv3d(*args, None)
    assert_close_to_oracle(y, torch_backend.causal_conv3d(*args, None), conv_oracle(*args), dtype)
    assert y.is_contiguous(memory_format=CL)


@DTYPES
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_causal_conv3d_out_into_frames_of_a_buffer(case, dtype):
    """`out` is the body of a larger channels-last buffer, as the engine hands out (buf[:, :, 2:])."""
    args = conv_inputs(case, dtype)
    oracle = conv_oracle(*args)
    buf = poisoned(oracle.shape[0], oracle.shape[1], 2 + oracle.shape[2], *oracle.shape[3:], dtype=dtype)
    out = buf[:, :, 2:]
    assert cpp.causal_conv3d(*args, out) is out
    assert_close_to_oracle(out, torch_backend.causal_conv3d(*args, None), oracle, dtype)
    assert torch.isnan(buf[:, :, :2]).all(), "wrote outside out"


@DTYPES
@pytest.mark.parametrize("case", ["time_pad1_cache2_joined", "time_stride2_cache1", "time_pad1_cache1_apart_residual",
                                  "3x3x3_cache2_joined_residual",
                                  "pointwise_residual", "down_4x4_stride2"])
def test_causal_conv3d_out_strided(case, dtype):
    """`out` as every other frame of a buffer (the time-upsampler's interleaved output, out[:, :, s::2])."""
    args = conv_inputs(case, dtype)
    oracle = conv_oracle(*args)
    n, c, t, h, w = oracle.shape
    buf = poisoned(n, c, 2 * t + 1, h, w, dtype=dtype)
    out = buf[:, :, 1::2]
    cpp.causal_conv3d(*args, out)
    assert_close_to_oracle(out, torch_backend.causal_conv3d(*args, None), oracle, dtype)
    assert torch.isnan(buf[:, :, 0::2]).all(), "wrote outside out"


@DTYPES
@pytest.mark.parametrize("case", ["3x3x3_cache2_apart_residual", "pointwise_nobias", "time_stride2_cache1"])
def test_causal_conv3d_contiguous_layout(case, dtype):
    """NCDHW inputs (not the model's layout) give NCDHW outputs, and `out` may be an NCDHW slice
    (the decoder head writes into the result video)."""
    args = conv_inputs(case, dtype, channels_last=False)
    oracle = conv_oracle(*args)
    y = cpp.causal_conv3d(*args, None)
    assert y.is_contiguous()
    assert_close_to_oracle(y, torch_backend.causal_conv3d(*args, None), oracle, dtype)
    n, c, t, h, w = oracle.shape
    video = poisoned(n, c, t + 2, h, w, dtype=dtype, channels_last=False)
    cpp.causal_conv3d(*args, video[:, :, 1:1 + t])
    assert_close_to_oracle(video[:, :, 1:1 + t], y, oracle, dtype)
    assert torch.isnan(video[:, :, 0]).all() and torch.isnan(video[:, :, -1]).all()


@DTYPES
def test_causal_conv3d_no_output_frames(dtype):
    x = randn(1, 5, 1, 5, 5, dtype=dtype)
    weight = randn(5, 5, 3, 1, 1, dtype=dtype).contiguous()
    assert cpp.causal_conv3d(x, weight, None, None, (2, 1, 1), (0, 0, 0), None, None).shape == (1, 5, 0, 5, 5)


@DTYPES
@pytest.mark.parametrize("h,w", [(47, 85), (67, 71)])
@pytest.mark.parametrize("batch,frames,cache_frames,cout", [(2, 9, 2, 40), (1, 6, 0, 40), (3, 1, 1, 40), (1, 5, 2, 3)])
def test_causal_conv3d_winograd_blocks(batch, frames, cache_frames, cout, h, w, dtype):
    """3x3x3 convs with 8+ input channels (any output count: 3 is the RGB head) run as Winograd in blocks of
    tiles x output frames (F(2x2, 3x3) in float32; for bfloat16, F(4x4, 3x3) on the 47x85 plane and F(6x6, 3x3) on
    the 67x71 one; the small shapes above test bf16's F(2x2, 3x3); bf16 only where AMX is absent or hidden, else
    oneDNN): odd H and W (part-filled edge tiles), several tile and frame blocks (24 x 43 and 34 x 36 tiles of 2x2,
    12 x 22 and 12 x 12 of 4x4 or 6x6: more than one block of tiles at these channel counts), a batch, zero frames in
    front, a residual, and `out` as every other frame of a buffer (dense channels, strided frames: written in place)."""
    torch.manual_seed(batch * 100 + frames)
    cin = 24
    buf = randn(batch, cin, cache_frames + frames, h, w, dtype=dtype)
    cache, x = (buf[:, :, :cache_frames], buf[:, :, cache_frames:]) if cache_frames else (None, buf)
    weight = randn(cout, cin, 3, 3, 3, dtype=dtype, scale=(27 * cin) ** -0.5).contiguous()
    bias = randn(cout, dtype=dtype)
    residual = randn(batch, cout, frames, h, w, dtype=dtype)
    args = (x, weight, bias, cache, (1, 1, 1), (1, 1, 1), residual)
    oracle = conv_oracle(*args)
    reference = torch_backend.causal_conv3d(*args, None)
    assert_close_to_oracle(cpp.causal_conv3d(*args, None), reference, oracle, dtype)
    out_buf = poisoned(batch, cout, 2 * frames, h, w, dtype=dtype)
    cpp.causal_conv3d(*args, out_buf[:, :, 1::2])
    assert_close_to_oracle(out_buf[:, :, 1::2], reference, oracle, dtype)
    assert torch.isnan(out_buf[:, :, 0::2]).all(), "wrote outside out"


@pytest.mark.parametrize("dtype,h,w", [(torch.float32, 18, 20), (torch.bfloat16, 32, 36)], ids=["fp32", "bf16"])
def test_causal_conv3d_winograd_many_channels(dtype, h, w):
    """384 channels on a small plane: the Winograd blocks that fit in L2 would be too small, so V and M of all
    tiles go through memory (GEMMs in chunks of 64 tiles; here 90 and 72 tiles, F(2x2) and F(4x4) for bf16),
    over a batch of 2, one zero frame and one cache frame, with a residual."""
    torch.manual_seed(h)
    c = 384
    cache, x = randn(2, c, 1, h, w, dtype=dtype), randn(2, c, 1, h, w, dtype=dtype)
    weight = randn(c, c, 3, 3, 3, dtype=dtype, scale=(27 * c) ** -0.5).contiguous()
    args = (x, weight, randn(c, dtype=dtype), cache, (1, 1, 1), (1, 1, 1), randn(2, c, 1, h, w, dtype=dtype))
    assert_close_to_oracle(cpp.causal_conv3d(*args, None), torch_backend.causal_conv3d(*args, None),
                           conv_oracle(*args), dtype)


# (cin, cout, frames, H, W) of the two ways the Winograd GEMMs are cut up beyond one block of tiles x frames:
# - per tap and column block: where a point's slice of the transformed weight (kt * Cin x Cout) would not stay in L2,
#   its GEMMs take one tap at a time, and columns in blocks when one tap's slice is still too large: 272 -> 264
#   channels, two uneven blocks of output columns (144 + 120), in blocks of tiles x 4 frames that fit the scratch
#   (36 tiles in blocks of 12 or 18 for a scratch of 2 or 4 MiB, 8 frames in 2 blocks);
# - groups of tiles: where V and M of many tiles go through memory (few tile-frames per block: many input channels),
#   they do so in groups of tiles of up to 16 MiB, so that large planes keep the memory bounded: 640 -> 8 channels,
#   289 tiles in float32 as groups of 135, 135 and 19, 81 in bf16 (F(4x4)) as 60 and 21.
GEMM_CUTS = {"per_tap_and_column_block": (272, 264, 8, 12, 12), "groups_of_tiles": (640, 8, 1, 34, 34)}


@DTYPES
@pytest.mark.parametrize("cut", list(GEMM_CUTS))
def test_causal_conv3d_winograd_gemm_cuts(cut, dtype):
    """The cuts above, each with a cache frame apart and a residual."""
    cin, cout, frames, h, w = GEMM_CUTS[cut]
    torch.manual_seed(cin)
    cache, x = randn(1, cin, 1, h, w, dtype=dtype), randn(1, cin, frames, h, w, dtype=dtype)
    weight = randn(cout, cin, 3, 3, 3, dtype=dtype, scale=(27 * cin) ** -0.5).contiguous()
    args = (x, weight, randn(cout, dtype=dtype), cache, (1, 1, 1), (1, 1, 1), randn(1, cout, frames, h, w, dtype=dtype))
    assert_close_to_oracle(cpp.causal_conv3d(*args, None), torch_backend.causal_conv3d(*args, None),
                           conv_oracle(*args), dtype)


@DTYPES
@pytest.mark.parametrize("h,w", [(17, 23), (32, 32)])
def test_causal_conv3d_strided_zero_edge_weight(h, w, dtype):
    """The downsampler's conv: a 3x3 stride-2 conv zero-padded on the right and bottom only, written as a 4x4
    stride-2 conv with padding 1 whose first weight row and column are zero (layers.Resample). The C++ op drops
    the zero taps; the result must still be that of the 4x4 conv, over a batch of 2, odd and even planes and
    40 channels, also when `out` is every other frame of a buffer."""
    torch.manual_seed(h)
    c = 40
    x = randn(2, c, 3, h, w, dtype=dtype)
    w3 = randn(c, c, 3, 3, dtype=dtype, scale=(9 * c) ** -0.5)
    weight = F.pad(w3, (1, 0, 1, 0)).unsqueeze(2).contiguous()
    args = (x, weight, randn(c, dtype=dtype), None, (1, 2, 2), (0, 1, 1), None)
    oracle = conv_oracle(*args)
    # the 4x4 form is the upstream conv: zero padding on the right and bottom, 3x3 stride 2
    upstream = F.conv2d(F.pad(f64(x).transpose(1, 2).flatten(0, 1), (0, 1, 0, 1)), f64(w3), f64(args[2]), stride=2)
    torch.testing.assert_close(oracle, upstream.unflatten(0, (2, 3)).transpose(1, 2), rtol=0, atol=1e-12)
    reference = torch_backend.causal_conv3d(*args, None)
    assert_close_to_oracle(cpp.causal_conv3d(*args, None), reference, oracle, dtype)
    buf = poisoned(2, c, 6, *oracle.shape[3:], dtype=dtype)
    cpp.causal_conv3d(*args, buf[:, :, 1::2])
    assert_close_to_oracle(buf[:, :, 1::2], reference, oracle, dtype)
    assert torch.isnan(buf[:, :, 0::2]).all(), "wrote outside out"


def test_causal_conv3d_notices_a_changed_weight():
    """The packed weight is cached per weight tensor; an in-place update must rebuild it."""
    args = list(conv_inputs("3x3x3_cache2_joined_residual", torch.float32))
    weight = args[1]
    before = cpp.causal_conv3d(*args, None)
    with torch.no_grad():
        weight.mul_(-0.5)
    after = cpp.causal_conv3d(*args, None)
    assert_close_to_oracle(after, torch_backend.causal_conv3d(*args, None), conv_oracle(*args), torch.float32)
    assert not torch.allclose(before, after)


@DTYPES
def test_causal_conv3d_weight_packed_per_input_shape(dtype):
    """oneDNN's weight layout depends on the input's shape, so the packed weight is kept per shape (variants
    with the same bytes share one), a few per weight: more shapes than are kept, visited twice over, all give
    the oracle's result. 5 input channels: oneDNN's conv on every CPU."""
    x, weight, bias = conv_inputs("3x3x3_T1_nocache", dtype)[:3]
    for t in [1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1]:
        xt = randn(1, x.shape[1], t, 7, 9, dtype=dtype)
        case = (xt, weight, bias, None, (1, 1, 1), (1, 1, 1), None)
        assert_close_to_oracle(cpp.causal_conv3d(*case, None), torch_backend.causal_conv3d(*case, None),
                               conv_oracle(*case), dtype)


@DTYPES
def test_causal_conv3d_steady_state_converts_no_weight(dtype, capfd):
    """After a first call per input shape, a conv converts no weight: a 384-channel conv whose oneDNN layout
    differs between 2 and 4 output frames on AMX (output channels in blocks of 32 or 48), called with both
    (oneDNN's verbose log lists every conversion; 150 ms per call for this weight in bf16 when it happened)."""
    c = 384
    weight = randn(c, c, 3, 3, 3, dtype=dtype, scale=(27 * c) ** -0.5).contiguous()
    inputs = [randn(1, c, t, 32, 32, dtype=dtype) for t in (4, 6)]
    for x in inputs:
        cpp.causal_conv3d(x, weight, None, None, (1, 1, 1), (0, 1, 1), None, None)
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        for x in inputs:
            cpp.causal_conv3d(x, weight, None, None, (1, 1, 1), (0, 1, 1), None, None)
    log = capfd.readouterr().out
    assert not [line for line in log.splitlines() if ",reorder," in line and "384x384x3x3x3" in line], log


# ---------------------------------------------------------------------------------------------
# rms_norm_silu
# ---------------------------------------------------------------------------------------------
@DTYPES
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "nosilu"])
@pytest.mark.parametrize("shape", [(1, 5, 3, 7, 9), (1, 13, 1, 9, 7), (2, 20, 2, 5, 3), (1, 97, 2, 3, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_rms_norm_silu(shape, silu, dtype):
    torch.manual_seed(shape[1])
    x = randn(*shape, dtype=dtype, scale=3.0)
    gamma = randn(shape[1], dtype=dtype)
    oracle = torch_backend.rms_norm_silu(x.double(), gamma.double(), silu, 1e-12, None)
    reference = torch_backend.rms_norm_silu(x, gamma, silu, 1e-12, None)
    y = cpp.rms_norm_silu(x, gamma, silu, 1e-12, None)
    assert_close_to_oracle(y, reference, oracle, dtype)
    assert y.is_contiguous(memory_format=CL)
    # into a conv's input buffer, behind 2 history frames
    buf = poisoned(shape[0], shape[1], shape[2] + 2, *shape[3:], dtype=dtype)
    assert cpp.rms_norm_silu(x, gamma, silu, 1e-12, buf[:, :, 2:]) is not None
    assert_close_to_oracle(buf[:, :, 2:], reference, oracle, dtype)
    assert torch.isnan(buf[:, :, :2]).all()
    # into a strided, non-channels-last view, from an NCDHW input
    x_ncdhw = x.contiguous()
    wide = poisoned(shape[0], shape[1], shape[2], shape[3], 2 * shape[4], dtype=dtype, channels_last=False)
    cpp.rms_norm_silu(x_ncdhw, gamma, silu, 1e-12, wide[..., ::2])
    assert_close_to_oracle(wide[..., ::2], reference, oracle, dtype)
    assert torch.isnan(wide[..., 1::2]).all()


@DTYPES
def test_rms_norm_silu_zero_position_and_image_gamma(dtype):
    """A position whose channels are all zero meets the eps clamp (output 0); gamma may be (C,1,1)."""
    x = randn(1, 13, 2, 5, 7, dtype=dtype)
    x[:, :, 1, 2, 3] = 0
    gamma = randn(13, 1, 1, dtype=dtype)
    oracle = torch_backend.rms_norm_silu(x.double(), gamma.reshape(-1).double(), False, 1e-12, None)
    with use_backend("cpp"):
        y = ops.rms_norm_silu(x, gamma, silu=False)
    assert_close_to_oracle(y, torch_backend.rms_norm_silu(x, gamma.reshape(-1), False, 1e-12, None), oracle, dtype)
    assert (y[:, :, 1, 2, 3] == 0).all()


# ---------------------------------------------------------------------------------------------
# upsample_conv2d
# ---------------------------------------------------------------------------------------------
@DTYPES
# in bf16 without AMX, the 34x38 output runs as Winograd F(4x4, 3x3) and the 66x70 one as F(6x6, 3x3) (reading x
# upsampled in place); the rest as four 2x2 phase convs
@pytest.mark.parametrize("cin,cout,t,h,w,has_bias", [(13, 5, 1, 7, 9, True), (20, 13, 3, 5, 3, False),
                                                     (26, 13, 2, 1, 6, True), (16, 24, 2, 17, 19, True),
                                                     (16, 24, 1, 33, 35, False)])
def test_upsample_conv2d(cin, cout, t, h, w, has_bias, dtype):
    torch.manual_seed(cin * 7 + h)
    x = randn(1, cin, t, h, w, dtype=dtype)
    weight = randn(cout, cin, 3, 3, dtype=dtype, scale=(9 * cin) ** -0.5)
    bias = randn(cout, dtype=dtype) if has_bias else None
    oracle = torch_backend.upsample_conv2d(x.double(), weight.double(), f64(bias))
    reference = torch_backend.upsample_conv2d(x, weight, bias)
    y = cpp.upsample_conv2d(x, weight, bias)
    assert y.is_contiguous(memory_format=CL)
    assert_close_to_oracle(y, reference, oracle, dtype)
    y_ncdhw = cpp.upsample_conv2d(x.contiguous(), weight, bias)
    assert y_ncdhw.is_contiguous()
    assert_close_to_oracle(y_ncdhw, reference, oracle, dtype)


# ---------------------------------------------------------------------------------------------
# memory_pool (csrc/cpu_pool.cpp)
# ---------------------------------------------------------------------------------------------
def test_memory_pool_reuses_blocks_within_a_span():
    """Inside a span a freed block of 1 MiB or more goes to the next allocation of its size. Tensors made in
    a span stay valid after it and are freed correctly later; spans nest; oneDNN's raw blocks and small
    tensors (torch's allocator) are freed correctly in and out of spans."""
    n = 1 << 20  # float32: 4 MiB
    x = torch.randn(1, 16, 40, 40).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3)
    expected = F.conv2d(x, w, padding=1)
    with cpp.memory_pool():
        a = torch.empty(n)
        freed = a.data_ptr()
        del a
        b = torch.empty(n)
        assert b.data_ptr() == freed, "a same-size block was not reused inside the span"
        kept = torch.arange(n, dtype=torch.float32)
        small = torch.ones(10)
        with cpp.memory_pool():
            y = F.conv2d(x, w, padding=1)
        torch.testing.assert_close(y, expected)
    assert torch.equal(kept, torch.arange(n, dtype=torch.float32)) and small.sum().item() == 10
    del b, kept, small  # freed after the span
    torch.testing.assert_close(F.conv2d(x, w, padding=1), expected)


def _resident_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_memory_pool_keeps_no_more_than_its_peak():
    """A size with no free block evicts kept blocks until kept + live bytes are within the span's peak of live
    bytes: after a freed 64 MiB block, a new 96 MiB one takes the 64 MiB's place (resident memory grows by
    about 32 MiB; keeping both would grow it by 96)."""
    mib = 1 << 20
    with cpp.memory_pool():
        a = torch.ones(64 * mib // 4)
        del a
        before = _resident_bytes()
        b = torch.ones(96 * mib // 4)
        grown = _resident_bytes() - before
        del b
    assert grown < 64 * mib, f"resident memory grew by {grown / mib:.0f} MiB: the freed block was kept"


def _huge_page_advised_mappings():
    """(start, end) of this process's mappings flagged for transparent huge pages (VmFlags "hg")."""
    spans, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                current = tuple(int(a, 16) for a in head.split("-"))
            elif head == "VmFlags:" and "hg" in line.split()[1:]:
                spans.append(current)
    return spans


HUGE_PAGE = 2 << 20


def test_memory_pool_blocks_ask_for_huge_pages():
    """A pooled block of 2 MiB or more starts on a 2 MiB boundary, and its whole huge pages are advised for huge
    pages (csrc/cpu_pool.cpp, advise_huge_pages)."""
    with cpp.memory_pool():
        a = torch.empty(3 * HUGE_PAGE // 4 + 7)  # 6 MiB and a bit: the tail is not a whole huge page
        start = a.data_ptr()
        assert start % HUGE_PAGE == 0, f"pooled block at {start:#x}, not on a 2 MiB boundary"
        assert any(lo <= start and start + 3 * HUGE_PAGE <= hi for lo, hi in _huge_page_advised_mappings()), \
            "the block's whole huge pages are not advised for huge pages"


def test_memory_pool_exit_without_enter_raises():
    from vaekernels import _C
    with pytest.raises(RuntimeError, match="exit without enter"):
        _C.cpu_pool_exit()


# ---------------------------------------------------------------------------------------------
# bf16 without AMX
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not _C.bf16_on_amx(), reason="no AMX here: this run's bf16 tests already take the brgemm paths")
def test_bf16_brgemm_paths_without_amx():
    """With AMX, bf16 convs go to oneDNN; the bf16 paths of CPUs without it (Winograd and strided convs on
    brgemm) must stay right too: rerun the bf16 op and precision tests with AMX hidden (VAEKERNELS_CPU_AMX=0)."""
    env = dict(os.environ, VAEKERNELS_CPU_AMX="0")
    probe = "from vaekernels import _C; assert not _C.bf16_on_amx()"
    subprocess.run([sys.executable, "-c", probe], env=env, check=True)
    tests = Path(__file__).parent
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "bf16 or bfloat16",
                          str(tests / "test_cpp_backend.py"), str(tests / "test_precision.py")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]


# ---------------------------------------------------------------------------------------------
# spatial_attention, dispatch, opcheck
# ---------------------------------------------------------------------------------------------
@DTYPES
def test_spatial_attention_strided_views(dtype):
    """q, k, v are channel slices of one [N, L, 3D] projection, as the attention block passes them."""
    torch.manual_seed(3)
    q, k, v = randn(2, 63, 3 * 20, dtype=dtype).split(20, dim=-1)
    oracle = torch_backend.spatial_attention(q.double(), k.double(), v.double())
    assert_close_to_oracle(cpp.spatial_attention(q, k, v), torch_backend.spatial_attention(q, k, v), oracle, dtype)


def test_dispatch():
    x = randn(1, 5, 1, 3, 3, dtype=torch.float32)
    with use_backend("cpp"):
        ops.rms_norm_silu(x, torch.ones(5))
        with pytest.raises(BackendUnavailable, match="float64"):
            ops.rms_norm_silu(x.double(), torch.ones(5, dtype=torch.float64))
    assert cpp.unsupported(x) is None
    assert "float64" in cpp.unsupported(x.double())


def opcheck_cases():
    x, weight, bias, cache, stride, padding, residual = conv_inputs("3x3x3_cache2_apart_residual", torch.float32)
    conv_args = (x, weight, bias, cache, list(stride), list(padding), residual)
    out = torch.empty(ops.conv_output_shape(x.shape, weight.shape, 2, stride, padding)).contiguous(memory_format=CL)
    xn = randn(1, 13, 2, 5, 7, dtype=torch.float32)
    up = (randn(1, 13, 2, 5, 7, dtype=torch.float32), randn(5, 13, 3, 3, dtype=torch.float32),
          randn(5, dtype=torch.float32))
    return {
        "causal_conv3d": conv_args,
        "causal_conv3d_out": conv_args + (out,),
        "rms_norm_silu": (xn, randn(13, dtype=torch.float32), True, 1e-12),
        "rms_norm_silu_out": (xn, randn(13, dtype=torch.float32), False, 1e-12, torch.empty_like(xn)),
        "upsample_conv2d": up,
    }


@pytest.mark.parametrize("name", list(opcheck_cases()))
def test_opcheck(name):
    torch.library.opcheck(getattr(torch.ops.vaekernels_cpp, name).default, opcheck_cases()[name])
