"""The ops API: semantics against independent float64 oracles, torch.library registration, backend choice."""
import pytest
import torch
import torch.nn.functional as F

from vaekernels import BackendUnavailable, ops, use_backend
from vaekernels.backends import select


def oracle_conv(x, weight, bias, cache, stride, padding, residual=None):
    """CausalConv3d as the spec states it, in float64 with explicit copies."""
    pt, ph, pw = padding
    x, weight = x.double(), weight.double()
    c = 0 if cache is None else cache.shape[2]
    parts = [x.new_zeros(x.shape[0], x.shape[1], max(0, 2 * pt - c), *x.shape[3:])]
    if c:
        parts.append(cache.double())
    seq = F.pad(torch.cat(parts + [x], 2), (pw, pw, ph, ph))
    y = F.conv3d(seq, weight, None if bias is None else bias.double(), stride)
    return y if residual is None else y + residual.double()


def poisoned(shape, dtype=torch.float32, channels_last=True):
    t = torch.full(shape, float("nan"), dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last_3d) if channels_last and t.dim() == 5 else t


CONV_CASES = [
    # (cin, cout, kernel, stride, padding, cache frames, T, H, W)
    (5, 7, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, 3, 5, 7),
    (5, 7, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, 1, 5, 7),
    (5, 7, (3, 3, 3), (1, 1, 1), (1, 1, 1), 0, 1, 6, 5),
    (13, 6, (1, 1, 1), (1, 1, 1), (0, 0, 0), 0, 2, 3, 5),
    (6, 12, (3, 1, 1), (1, 1, 1), (1, 0, 0), 2, 3, 4, 3),
    (6, 6, (3, 1, 1), (2, 1, 1), (0, 0, 0), 1, 4, 3, 5),
    (6, 6, (3, 1, 1), (2, 1, 1), (0, 0, 0), 2, 1, 3, 5),
    (6, 6, (1, 4, 4), (1, 2, 2), (0, 1, 1), 0, 2, 7, 6),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("with_out", [False, True])
def test_causal_conv3d_torch_backend(case, with_out):
    cin, cout, k, stride, padding, c, t, h, w = case
    torch.manual_seed(0)
    x = torch.randn(1, cin, t, h, w).contiguous(memory_format=torch.channels_last_3d)
    cache = torch.randn(1, cin, c, h, w) if c else None
    weight, bias = torch.randn(cout, cin, *k), torch.randn(cout)
    expected = oracle_conv(x, weight, bias, cache, stride, padding)
    residual = torch.randn(expected.shape)
    expected = expected + residual.double()
    with use_backend("torch"):
        if with_out:
            big = poisoned((1, cout, 2 * expected.shape[2] + 1, *expected.shape[3:]))
            out = big[:, :, 1::2]  # a strided view, as the upsampler's interleaved frames
            y = ops.causal_conv3d(x, weight, bias, cache=cache, stride=stride, padding=padding,
                                  residual=residual, out=out)
            assert y is out and big[:, :, 0::2].isnan().all()  # nothing written outside the view
        else:
            y = ops.causal_conv3d(x, weight, bias, cache=cache, stride=stride, padding=padding, residual=residual)
    # float32 sums of <= 27*13 products of N(0,1) values: rounding well under 1e-4 relative
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


def test_rms_norm_silu_torch_backend():
    torch.manual_seed(0)
    x = torch.randn(2, 13, 3, 5, 7).contiguous(memory_format=torch.channels_last_3d)
    gamma = torch.randn(13, 1, 1, 1)
    x64 = x.double()
    ref = x64 / x64.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-12) * 13 ** 0.5 * gamma.double().view(1, -1, 1, 1, 1)
    with use_backend("torch"):
        y = ops.rms_norm_silu(x, gamma)
        plain = ops.rms_norm_silu(x, gamma, silu=False)
        out = poisoned((2, 13, 5, 5, 7))[:, :, 2:]
        ops.rms_norm_silu(x, gamma, out=out)
    # float32: a norm and a few multiplications, a few ulps
    torch.testing.assert_close(plain.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.double(), F.silu(ref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, y, rtol=0, atol=0)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)


def test_spatial_attention_and_upsample_conv2d_torch_backend():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 37, 24) for _ in range(3))
    s = (q.double() @ k.double().transpose(1, 2)) / 24 ** 0.5
    ref = s.softmax(-1) @ v.double()
    x = torch.randn(1, 5, 2, 3, 5).contiguous(memory_format=torch.channels_last_3d)
    w, b = torch.randn(7, 5, 3, 3), torch.randn(7)
    up = x.double().repeat_interleave(2, 3).repeat_interleave(2, 4)
    ref_up = torch.stack([F.conv2d(up[:, :, i], w.double(), b.double(), padding=1) for i in range(2)], 2)
    with use_backend("torch"):
        a = ops.spatial_attention(q, k, v)
        u = ops.upsample_conv2d(x, w, b)
    # float32 rounding of short sums
    torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u.double(), ref_up, rtol=1e-4, atol=1e-4)


def test_opcheck_all_ops():
    torch.manual_seed(0)
    x = torch.randn(1, 5, 2, 4, 6).contiguous(memory_format=torch.channels_last_3d)
    cache = torch.randn(1, 5, 2, 4, 6).contiguous(memory_format=torch.channels_last_3d)
    w, b = torch.randn(4, 5, 3, 3, 3), torch.randn(4)
    q = torch.randn(2, 9, 8)
    samples = [
        (torch.ops.vaekernels.causal_conv3d, (x, w, b, cache, [1, 1, 1], [1, 1, 1], None)),
        (torch.ops.vaekernels.causal_conv3d_out,
         (x, w, b, cache, [1, 1, 1], [1, 1, 1], torch.randn(1, 4, 2, 4, 6), torch.empty(1, 4, 2, 4, 6))),
        (torch.ops.vaekernels.rms_norm_silu, (x, torch.randn(5), True, 1e-12)),
        (torch.ops.vaekernels.rms_norm_silu_out, (x, torch.randn(5), True, 1e-12, torch.empty_like(x))),
        (torch.ops.vaekernels.spatial_attention, (q, q.clone(), q.clone())),
        (torch.ops.vaekernels.upsample_conv2d, (x, torch.randn(3, 5, 3, 3), torch.randn(3))),
    ]
    with use_backend("torch"):
        for op, args in samples:
            torch.library.opcheck(op, args)


def test_backend_choice(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("VAEKERNELS_BACKEND", "torch")
    assert select(x).__name__.endswith(".torch")
    monkeypatch.setenv("VAEKERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="expected one of auto"):
        select(x)
    monkeypatch.delenv("VAEKERNELS_BACKEND")
    with pytest.raises(ValueError, match="expected one of auto"):
        with use_backend("fast"):
            pass
    with use_backend("torch"):
        assert select(x).__name__.endswith(".torch")
    # an explicit request that can't run raises (neither runs float64), never a silent fallback
    for name in ("triton", "cpp"):
        with use_backend(name), pytest.raises(BackendUnavailable, match=f"'{name}' was requested"):
            select(x.double())


def test_bad_op_arguments():
    x = torch.zeros(1, 5, 2, 4, 4)
    with pytest.raises(ValueError, match="weight must be"):
        ops.causal_conv3d(x, torch.zeros(3, 4, 3, 3, 3))
    with pytest.raises(ValueError, match="cache must be"):
        ops.causal_conv3d(x, torch.zeros(3, 5, 3, 3, 3), cache=torch.zeros(1, 5, 3, 4, 4), padding=(1, 1, 1))
    with pytest.raises(ValueError, match="gamma must have 5"):
        ops.rms_norm_silu(x, torch.zeros(4))
    with pytest.raises(ValueError, match="q, k, v must be equal"):
        ops.spatial_attention(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))


def test_auto_falls_back_and_says_so_once(monkeypatch, recwarn):
    import vaekernels.backends as backends

    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.delenv("VAEKERNELS_BACKEND", raising=False)
    x = torch.zeros(1, dtype=torch.float64)  # the cpp backend takes float32/bfloat16 only
    assert select(x).__name__.endswith(".torch")
    assert select(x).__name__.endswith(".torch")
    fallbacks = [w for w in recwarn if "falling back" in str(w.message)]
    assert len(fallbacks) == 1 and "'cpp' not used" in str(fallbacks[0].message)
