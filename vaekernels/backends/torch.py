"""The plain-PyTorch backend: always available, the readable statement of every op.

Copies are avoided where plain ops allow it:
- convs that are 1x1 in space (1x1x1 and the (3,1,1) time convs) are computed tap by tap as
  matrix products accumulated into the output, reading ``cache`` and ``x`` where they lie;
- other convs need cache and chunk as one tensor: when the caller put ``cache`` right in front
  of ``x`` in one buffer (the engine does), that buffer is used as it is; only a caller that did
  not pays for a ``torch.cat``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..shapes import (avg_down3d_output_shape, conv_output_shape, dup_up3d_output_shape, empty_output,
                      output_format)


def supports(op, *args):
    return None  # every op, any device and dtype


def _joined_view(cache, x):
    """``cache`` followed by ``x`` as one view, when they are adjacent in one buffer; else None."""
    if cache.stride() != x.stride() or cache.dtype != x.dtype or cache.device != x.device:
        return None
    c = cache.shape[2]
    if cache.data_ptr() + c * x.stride(2) * x.element_size() != x.data_ptr():
        return None
    shape = list(x.shape)
    shape[2] += c
    return cache.as_strided(shape, x.stride())


def _time_sequence(x, cache, zeros):
    """``zeros`` zero frames, then ``cache``, then ``x``, as one tensor (a view where possible: not when autograd
    records the call, as a view made from ``cache`` would take ``x``'s gradient with it)."""
    recorded = torch.is_grad_enabled() and (x.requires_grad or (cache is not None and cache.requires_grad))
    if cache is not None and cache.shape[2] and zeros == 0 and not recorded:
        joined = _joined_view(cache, x)
        if joined is not None:
            return joined
    parts = []
    if zeros:
        parts.append(x.new_zeros(x.shape[0], x.shape[1], zeros, *x.shape[3:]))
    if cache is not None and cache.shape[2]:
        parts.append(cache)
    if not parts:
        return x
    return torch.cat(parts + [x], dim=2).contiguous(memory_format=output_format(x))


def _frames(t):
    """``[N, C, T, H, W]`` -> ``[N, T, H*W, C]`` view (rows are positions, columns channels)."""
    return t.permute(0, 2, 3, 4, 1).flatten(2, 3)


def _pointwise_conv(x, weight, bias, cache, stride, zeros, residual, out):
    """A conv that is 1x1 in space: ``out[j] = sum_k W[:, :, k] @ seq[j*st + k]`` accumulated in place.

    ``seq`` is zeros, cache, x (virtually): each tap reads the frames of ``cache`` and of ``x``
    it needs without joining them.
    """
    n, cout, t_out = out.shape[0], out.shape[1], out.shape[2]
    st = stride[0]
    if residual is not None:
        out.copy_(residual)
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1, 1))
    elif bias is not None:
        out.copy_(bias.view(1, -1, 1, 1, 1).expand_as(out))
    else:
        out.zero_()
    if t_out == 0:
        return out
    dst = _frames(out)
    sources = [(zeros, x)]
    if cache is not None and cache.shape[2]:
        sources.insert(0, (zeros, cache))
        sources[1] = (zeros + cache.shape[2], x)
    for k in range(weight.shape[2]):
        wk = weight[:, :, k, 0, 0].t()  # [Cin, Cout]
        for start, src in sources:
            # output frames j whose tap-k frame j*st + k falls inside src (frames start .. start+len-1)
            j0 = max(0, -(-(start - k) // st))
            j1 = min(t_out - 1, (start + src.shape[2] - 1 - k) // st)
            if j1 < j0:
                continue
            s0 = j0 * st + k - start
            srcv = _frames(src)[:, s0: s0 + (j1 - j0) * st + 1: st]
            for b in range(n):  # batch is 1 in the model; loop keeps every matrix a plain view
                d = dst[b, j0: j1 + 1]
                d.baddbmm_(srcv[b], wk.expand(d.shape[0], -1, -1))
    return out


def causal_conv3d(x, weight, bias, cache, stride, padding, residual, out):
    pt, ph, pw = padding
    c = 0 if cache is None else cache.shape[2]
    zeros = max(0, 2 * pt - c)
    shape = conv_output_shape(x.shape, weight.shape, c, stride, padding)
    if weight.shape[3:] == (1, 1) and ph == pw == 0 and stride[1:] == (1, 1):
        if out is None:
            out = empty_output(x, shape)
        return _pointwise_conv(x, weight, bias, cache, stride, zeros, residual, out)
    seq = _time_sequence(x, cache, zeros)
    if shape[2] == 0:
        y = empty_output(x, shape)
    else:
        # ATen keeps channels-last only above a size threshold; the op's contract is x's format
        y = F.conv3d(seq, weight, bias, stride, (0, ph, pw)).contiguous(memory_format=output_format(x))
    if out is None:
        return y.add_(residual) if residual is not None else y
    if residual is not None:
        return torch.add(y, residual, out=out)
    return out.copy_(y)


def causal_conv3d_backward(grad, needs, x, weight, bias, cache, stride, padding, residual):
    """Gradients of ``causal_conv3d``'s arguments ``(x, weight, bias, cache, stride, padding, residual)`` for the
    output's ``grad``, where ``needs`` says (None elsewhere): ATen's convolution backward on the time sequence the
    forward read, a view where the cache lies right in front of ``x`` (the engine's buffers), without running the
    forward again."""
    pt, ph, pw = padding
    c = 0 if cache is None else cache.shape[2]
    zeros = max(0, 2 * pt - c)
    need_x, need_w, need_b, need_cache, need_res = (needs[i] for i in (0, 1, 2, 3, 6))
    g_seq = None
    if grad.shape[2] == 0:  # no output frame: nothing depends on the inputs
        g_seq = x.new_zeros(x.shape[0], x.shape[1], zeros + c + x.shape[2], *x.shape[3:])
    elif need_x or need_cache:
        seq = _time_sequence(x, cache, zeros)
        g_seq = torch.ops.aten.convolution_backward(grad.to(x.dtype), seq, weight, None, stride, (0, ph, pw),
                                                    (1, 1, 1), False, (0, 0, 0), 1, [True, False, False])[0]
    return (g_seq[:, :, zeros + c:] if need_x else None,
            causal_conv3d_weight_grad(grad, x, weight, cache, stride, padding) if need_w else None,
            bias_grad(grad, bias) if need_b and bias is not None else None,
            g_seq[:, :, zeros:zeros + c] if need_cache else None, None, None,
            grad if need_res and residual is not None else None)


def causal_conv3d_weight_grad(grad, x, weight, cache, stride, padding):
    """The weight's gradient, ATen's convolution backward on contiguous copies: oneDNN's channels-last weight
    gradient ran at 69-102 GFLOP/s against 132-140 on contiguous inputs (3x3x3 float32 convs of the decoder, 96-384
    channels, AMD Zen 3, 2 cores)."""
    if grad.shape[2] == 0:
        return torch.zeros_like(weight)
    pt, ph, pw = padding
    c = 0 if cache is None else cache.shape[2]
    seq = _time_sequence(x, cache, max(0, 2 * pt - c))
    return torch.ops.aten.convolution_backward(grad.to(x.dtype).contiguous(), seq.contiguous(), weight, None, stride,
                                               (0, ph, pw), (1, 1, 1), False, (0, 0, 0), 1, [False, True, False])[1]


def causal_conv3d_data_grad(grad, weight, front, padding, conv=None):
    """The data gradient of a stride-1 causal conv as a conv (see ops/causal_conv3d.py): the output's gradient with
    ``front`` zero frames before it and kt - 1 after (a padded copy), convolved with the weight's channels swapped and
    its taps reversed (a flipped copy), by ``conv`` (a backend's causal_conv3d; this backend's by default)."""
    seq = torch.nn.functional.pad(grad, (0, 0, 0, 0, front, weight.shape[2] - 1))
    return (conv or causal_conv3d)(seq, flipped_weight(weight), None, None, (1, 1, 1), (0, *padding), None, None)


def flipped_weight(weight):
    """The data gradient's conv weight: channels swapped, taps reversed in time and space."""
    return weight.transpose(0, 1).flip(2, 3, 4).contiguous()


def bias_grad(grad, bias):
    """The bias's gradient: the output's gradient summed over all but channels (in float32 for 16-bit data). A
    float32 channels-last gradient is one matrix (a row per position) times a vector of ones: BLAS's product read it
    2.4x as fast as ATen's sum over the other dims (50 MB, 2 Sapphire Rapids cores)."""
    if grad.dtype == torch.float32 and grad.is_contiguous(memory_format=torch.channels_last_3d):
        rows = grad.permute(0, 2, 3, 4, 1).reshape(-1, grad.shape[1])  # a view
        return torch.mv(rows.t(), rows.new_ones(rows.shape[0])).to(bias.dtype)
    return grad.sum((0, 2, 3, 4), dtype=torch.promote_types(grad.dtype, torch.float32)).to(bias.dtype)


def rms_norm_silu(x, gamma, silu, eps, out):
    c = x.shape[1]
    stats = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 inputs: float32 statistics
    xf = x.to(stats)
    norm = torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min(eps)
    g = gamma.to(stats).view(1, c, *([1] * (x.dim() - 2)))
    y = xf / norm * (math.sqrt(c) * g)
    if silu:
        y = F.silu(y)
    if out is None:
        return y.to(x.dtype)
    return out.copy_(y)


def rms_norm_silu_backward(grad, x, gamma, silu, eps):
    """Gradients of x and gamma, in float32 for 16-bit inputs (as the forward's statistics). With n = max(|x|, eps)
    over channels and u = x / n * sqrt(C) * gamma: du/dx = sqrt(C) * gamma * (I - x x^T / |x|^2) / n where |x| > eps,
    sqrt(C) * gamma / eps where the norm is clamped (as autograd through clamp_min gives)."""
    compute = torch.promote_types(x.dtype, torch.float32)
    xf, g = x.to(compute), grad.to(compute)
    c = x.shape[1]
    gamma_b = gamma.to(compute).reshape(1, c, *[1] * (x.dim() - 2))
    norm = xf.pow(2).sum(1, keepdim=True).sqrt()
    n = norm.clamp_min(eps)
    xhat = xf / n * c ** 0.5
    if silu:
        u = xhat * gamma_b
        sig = torch.sigmoid(u)
        g = g * sig * (1 + u * (1 - sig))
    g_gamma = (g * xhat).sum(dim=[d for d in range(x.dim()) if d != 1])
    gy = g * gamma_b
    projection = torch.where(norm > eps, (gy * xf).sum(1, keepdim=True) / norm.pow(2), 0.0)
    g_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
    return g_x.copy_((gy - xf * projection) * (c ** 0.5 / n)), g_gamma.to(gamma.dtype).reshape(gamma.shape)


def spatial_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def upsample_conv2d(x, weight, bias, residual):
    n, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(n * t, c, h, w)
    # nearest upsampling in float32, as the original does, then back to the compute dtype
    up = F.interpolate(frames.float(), scale_factor=2.0, mode="nearest").to(x.dtype)
    y = F.conv2d(up, weight, bias, padding=1)
    y = y.view(n, t, *y.shape[1:]).transpose(1, 2).contiguous(memory_format=output_format(x))
    return y if residual is None else y.add_(residual)


def _fold_groups(frames, factor_t, factor_s, out_channels):
    """``[N, C, m*ft, H, W]`` -> ``[N, out, m, H/fs, W/fs]``: each ft x fs x fs block moved into channels
    (channel-major, then the t, h, w offsets), groups of consecutive channels averaged down to ``out``."""
    n, c, t, h, w = frames.shape
    m, hs, ws = t // factor_t, h // factor_s, w // factor_s
    v = frames.reshape(n, c, m, factor_t, hs, factor_s, ws, factor_s).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return v.reshape(n, out_channels, -1, m, hs, ws).mean(2)


def avg_down3d(x, cache, zeros, factor_t, factor_s, out_channels):
    c = 0 if cache is None else cache.shape[2]
    out = empty_output(x, avg_down3d_output_shape(x.shape, c, zeros, factor_t, factor_s, out_channels))
    if out.shape[2] == 0:
        return out
    front = zeros + c  # frames of the sequence before x: zeros, then the cache
    lead = (factor_t - front % factor_t) % factor_t  # x's frames that complete the group the front starts
    done = 0
    if front:
        group = x.new_zeros(x.shape[0], x.shape[1], front + lead, *x.shape[3:])  # a few frames, not a whole chunk
        if c:
            group[:, :, zeros:front].copy_(cache)
        group[:, :, front:].copy_(x[:, :, :lead])
        done = (front + lead) // factor_t
        out[:, :, :done].copy_(_fold_groups(group, factor_t, factor_s, out_channels))
    rest = out.shape[2] - done
    if rest:
        frames = x[:, :, lead:lead + rest * factor_t]
        out[:, :, done:].copy_(_fold_groups(frames, factor_t, factor_s, out_channels))
    return out


def dup_up3d(x, factor_t, factor_s, out_channels, drop):
    n, c, t, h, w = x.shape
    repeats = out_channels * factor_t * factor_s * factor_s // c
    y = x.repeat_interleave(repeats, dim=1).view(n, out_channels, factor_t, factor_s, factor_s, t, h, w)
    y = y.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(n, out_channels, t * factor_t, h * factor_s, w * factor_s)
    out = empty_output(x, dup_up3d_output_shape(x.shape, factor_t, factor_s, out_channels, drop))
    return out.copy_(y[:, :, drop:])
