"""Tests of the numpy references themselves: hand-computed tiny cases and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as R
from hypothesis import given, settings
from hypothesis import strategies as st

A = np.testing.assert_allclose
rng = np.random.default_rng(1234)


def randn(*shape):
    return rng.standard_normal(shape)


def naive_conv2d(x, w, stride, pad, dilation, group):
    """Seven nested loops, straight from the definition (only for tiny shapes)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])])
    oh = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((n, o, oh, ow))
    og = o // group
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(oh):
                for j in range(ow):
                    s = 0.0
                    for ci in range(cg):
                        for a in range(kh):
                            for e in range(kw):
                                r = i * stride[0] + a * dilation[0]
                                q = j * stride[1] + e * dilation[1]
                                s += xp[b, g * cg + ci, r, q] * w[oc, ci, a, e]
                    y[b, oc, i, j] = s
    return y


# ---------------------------------------------------------------------------- convolution

X33 = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]


def test_conv_hand_2x2_kernel_with_bias():
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    (y,) = R.convolution(X33, w, np.array([1.0]))
    A(y[0, 0], [[38.0, 48.0], [68.0, 78.0]])


def test_conv_hand_stride_pad():
    (y,) = R.convolution(X33, np.ones((1, 1, 2, 2)), stride=2, pad=1)
    A(y[0, 0], [[1.0, 5.0], [11.0, 28.0]])


def test_conv_hand_dilation():
    (y,) = R.convolution(X33, np.ones((1, 1, 2, 2)), dilation=2)
    A(y[0, 0], [[1.0 + 3.0 + 7.0 + 9.0]])


def test_conv_identity_kernel():
    x = randn(2, 3, 5, 4)
    w = np.zeros((3, 3, 3, 3))
    for c in range(3):
        w[c, c, 1, 1] = 1.0
    A(R.convolution(x, w, pad=1)[0], x)


def test_conv_1x1_is_channel_matmul():
    x, w, b = randn(2, 3, 4, 5), randn(6, 3, 1, 1), randn(6)
    want = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0]) + b[None, :, None, None]
    A(R.convolution(x, w, b)[0], want)


def test_conv_group_is_separate_convs():
    x, w = randn(2, 4, 6, 6), randn(6, 2, 3, 3)
    (y,) = R.convolution(x, w, group=2, pad=1)
    A(y[:, :3], R.convolution(x[:, :2], w[:3], pad=1)[0])
    A(y[:, 3:], R.convolution(x[:, 2:], w[3:], pad=1)[0])


def test_conv_stride_is_subsampling():
    x, w = randn(1, 2, 9, 8), randn(3, 2, 3, 2)
    full = R.convolution(x, w, pad=(1, 0))[0]
    A(R.convolution(x, w, stride=(2, 3), pad=(1, 0))[0], full[:, :, ::2, ::3])


def test_conv_dilation_is_zero_inserted_kernel():
    x, w = randn(1, 2, 9, 9), randn(3, 2, 2, 3)
    wz = np.zeros((3, 2, 3, 7))
    wz[:, :, ::2, ::3] = w
    A(R.convolution(x, w, dilation=(2, 3))[0], R.convolution(x, wz)[0])


def test_conv_against_naive_loops():
    x, w = randn(2, 4, 7, 6), randn(6, 2, 3, 2)
    kw = dict(stride=(2, 1), pad=(1, 2), dilation=(1, 2), group=2)
    want = naive_conv2d(x, w, kw["stride"], kw["pad"], kw["dilation"], kw["group"])
    A(R.convolution(x, w, **kw)[0], want, atol=1e-12)


def test_conv_3d_matches_2d_on_unit_depth():
    x, w = randn(2, 3, 1, 5, 5), randn(4, 3, 1, 3, 3)
    y3 = R.convolution(x, w, pad=(0, 1, 1))[0]
    A(y3[:, :, 0], R.convolution(x[:, :, 0], w[:, :, 0], pad=1)[0])


def test_conv_rejects_kernel_larger_than_input():
    with pytest.raises(ValueError):
        R.convolution(randn(1, 1, 2, 2), randn(1, 1, 3, 3))


# ---------------------------------------------------------------------------- deconvolution


def test_deconv_hand_stride1():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    (y,) = R.deconvolution(x, np.ones((1, 1, 2, 2)))
    A(y[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])
    A(R.deconvolution(x, np.ones((1, 1, 2, 2)), pad=1)[0][0, 0], [[10.0]])


def test_deconv_hand_stride2_blocks_with_bias():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    (y,) = R.deconvolution(x, np.ones((1, 1, 2, 2)), np.array([0.5]), stride=2)
    want = np.kron([[1.0, 2.0], [3.0, 4.0]], np.ones((2, 2))) + 0.5
    A(y[0, 0], want)


def test_deconv_output_shape():
    (y,) = R.deconvolution(randn(2, 3, 5, 4), randn(3, 2, 4, 3), stride=2, pad=1, dilation=1)
    assert y.shape == (2, 2, 2 * 4 + 4 - 2, 2 * 3 + 3 - 2)


def _check_adjoint(n, cg, og, group, hw, k, s, p, d):
    c, o = cg * group, og * group
    x = randn(n, c, *hw)
    w = randn(o, cg, *k)
    (cx,) = R.convolution(x, w, stride=s, pad=p, dilation=d, group=group)
    y = randn(*cx.shape)
    (dy,) = R.deconvolution(y, w, stride=s, pad=p, dilation=d, group=group)
    # trailing rows the convolution never reads (it floors) are missing from the deconv
    xs = x[:, :, : dy.shape[2], : dy.shape[3]]
    A(np.vdot(cx, y), np.vdot(xs, dy), rtol=1e-10, atol=1e-10)
    assert dy.shape[:2] == x.shape[:2]


def test_deconv_is_adjoint_of_conv():
    _check_adjoint(2, 3, 2, 2, (7, 6), (3, 2), (2, 1), (1, 0), (1, 2))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2),
    cg=st.integers(1, 3),
    og=st.integers(1, 3),
    group=st.integers(1, 3),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    out=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    extra=st.tuples(st.integers(0, 2), st.integers(0, 2)),
)
def test_deconv_adjoint_property(n, cg, og, group, k, s, d, p, out, extra):
    # Deconvolution crops ``pad`` from both ends, so it is the exact adjoint only where the
    # convolution reads the input to its end: in = stride*(out-1) + extent - 2*pad. Without
    # padding, rows the convolution never reads (``extra`` < stride) may follow.
    hw = tuple(
        s[i] * (out[i] - 1) + d[i] * (k[i] - 1) + 1 - 2 * p[i] + (0 if p[i] else extra[i] % s[i])
        for i in range(2)
    )
    if min(hw) < 1:
        return
    _check_adjoint(n, cg, og, group, hw, k, s, p, d)


def test_deconv_stride1_equals_full_conv_with_flipped_kernel():
    x, w = randn(1, 2, 4, 5), randn(2, 3, 3, 2)  # deconv weights (C, O, kh, kw)
    wc = np.flip(w, axis=(2, 3)).transpose(1, 0, 2, 3)  # conv weights (O, C, kh, kw)
    A(R.deconvolution(x, w)[0], R.convolution(x, wc, pad=(2, 1))[0], atol=1e-12)


# ---------------------------------------------------------------------------- pooling

X44 = np.arange(16.0).reshape(1, 1, 4, 4)


def test_pooling_max_hand_and_mask():
    y, mask = R.pooling(X44, kernel=2, stride=2)
    A(y[0, 0], [[5, 7], [13, 15]])
    A(mask[0, 0], [[5, 7], [13, 15]])  # arange: the flat index is the value


def test_pooling_ave_hand():
    (y,) = R.pooling(X44, method="AVE", kernel=2, stride=2)
    A(y[0, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_pooling_ceil_clips_last_window():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y, mask = R.pooling(x, kernel=2, stride=2)
    A(y[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    A(mask, y)
    (a,) = R.pooling(x, method="AVE", kernel=2, stride=2)
    # no padding: the divisor is the window clipped to the image
    A(a[0, 0, 0], [3.0, 5.0, 6.5])
    A(a[0, 0, 2], [20.5, 22.5, 24.0])


def test_pooling_floor_round_mode():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y, _ = R.pooling(x, kernel=2, stride=2, round_mode="FLOOR")
    A(y[0, 0], [[6, 8], [16, 18]])


def test_pooling_ave_pad_divides_by_window_clipped_to_padded_image():
    (y,) = R.pooling(X44, method="AVE", kernel=3, stride=2, pad=1)
    want = [
        [10 / 9, 24 / 9, 10 / 6],
        [51 / 9, 90 / 9, 33 / 6],
        [25 / 6, 42 / 6, 15 / 4],
    ]
    A(y[0, 0], want)


def test_pooling_max_pad_never_picks_padding():
    y, mask = R.pooling(X44, kernel=3, stride=2, pad=1)
    A(y[0, 0], [[5, 7, 7], [13, 15, 15], [13, 15, 15]])
    A(mask, y)
    neg = -1.0 - X44
    y, mask = R.pooling(neg, kernel=3, stride=2, pad=1)
    A(y[0, 0], [[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]])
    A(mask[0, 0], [[0, 1, 3], [4, 5, 7], [12, 13, 15]])


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_grad_is_the_forwards_derivative(method):
    """Central differences of sum(pooling(x) * dy): exact for these piecewise-linear maps
    (x has no ties, and the step is far smaller than the gaps between its values)."""
    rng = np.random.default_rng(5)
    x = rng.permutation(60).reshape(1, 2, 5, 6) / 7.0
    geometry = {"method": method, "kernel": (3, 2), "stride": (2, 1), "pad": (1, 1)}
    dy = rng.standard_normal(R.pooling(x, **geometry)[0].shape)
    want = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = 1e-4
        up, down = (np.sum(R.pooling(x + s, **geometry)[0] * dy) for s in (step, -step))
        want[index] = (up - down) / 2e-4
    A(R.pooling_grad(x, dy, **geometry)[0], want, atol=1e-8)


def test_pooling_pad_drops_window_starting_in_padding():
    assert R.pooled_extent(3, 2, 2, 1) == 2  # ceil gives 3; the third starts at pad
    y, _ = R.pooling(X33, kernel=2, stride=2, pad=1)
    A(y[0, 0], [[1, 3], [7, 9]])
    assert R.pooled_extent(4, 3, 2, 1) == 3
    assert R.pooled_extent(6, 3, 2, 0) == 3
    assert R.pooled_extent(6, 3, 2, 0, "FLOOR") == 2


def test_pooling_max_first_max_wins():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = 1.0
    y, mask = R.pooling(x, kernel=2, stride=2)
    A(y[0, 0], [[1, 0], [0, 0]])
    A(mask[0, 0], [[4, 2], [8, 10]])


def test_pooling_empty_window_keeps_caffe_seed():
    # pad 0, kernel 1, stride 3 on 5: ceil gives 3 windows, the last starts past the image
    y, mask = R.pooling(np.arange(5.0).reshape(1, 1, 1, 5), kernel=(1, 1), stride=(1, 3))
    A(y[0, 0, 0], [0.0, 3.0, -R.FLT_MAX])
    A(mask[0, 0, 0], [0, 3, -1])


def test_pooling_global_is_plane_mean_and_max():
    x = randn(2, 3, 5, 4)
    (a,) = R.pooling(x, method="AVE", global_pooling=True)
    A(a[:, :, 0, 0], x.mean(axis=(2, 3)))
    m, mask = R.pooling(x, global_pooling=True)
    A(m[:, :, 0, 0], x.max(axis=(2, 3)))
    A(mask[:, :, 0, 0], x.reshape(2, 3, -1).argmax(axis=2))


def test_pooling_rectangular_and_caffe_spellings():
    x = randn(1, 2, 6, 7)
    y, _ = R.pooling(x, pool="MAX", kernel_size=(3, 2), stride=(3, 2))
    assert y.shape == (1, 2, 2, 4)
    A(y[0, 1, 1, 0], x[0, 1, 3:6, 0:2].max())
    A(y[0, 1, 1, 3], x[0, 1, 3:6, 6:7].max())


def test_pooling_stochastic_test_phase():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    (y,) = R.pooling(x, method="STOCHASTIC", kernel=2, stride=2)
    A(y[0, 0, 0, 0], 30.0 / 10.0)
    (y,) = R.pooling(-x, method="STOCHASTIC", kernel=2, stride=2)
    A(y[0, 0, 0, 0], 0.0)


# ---------------------------------------------------------------------------- LRN


def test_lrn_across_channels_hand():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    (y,) = R.lrn(x, local_size=3, alpha=3.0, beta=1.0, k=1.0)
    A(y.ravel(), [1 / 6, 2 / 15, 3 / 14])


def test_lrn_across_channels_size1_and_k():
    x = randn(2, 4, 3, 3)
    (y,) = R.lrn(x, local_size=1, alpha=0.5, beta=0.75, k=2.0)
    A(y, x * (2.0 + 0.5 * x**2) ** -0.75)


def test_lrn_within_channel_hand_ignores_k():
    x = np.full((1, 1, 1, 1), 2.0)
    (y,) = R.lrn(x, local_size=3, alpha=9.0, beta=1.0, k=100.0, norm_region="WITHIN_CHANNEL")
    A(y.ravel(), [2.0 / 5.0])


def test_lrn_within_channel_is_caffe_composition():
    x = randn(2, 3, 5, 4)
    n, alpha, beta = 3, 0.7, 0.6
    (pooled,) = R.pooling(x**2, method="AVE", kernel=n, stride=1, pad=(n - 1) // 2)
    (den,) = R.power(pooled, power=-beta, scale=alpha, shift=1.0)
    (y,) = R.lrn(x, local_size=n, alpha=alpha, beta=beta, norm_region="WITHIN_CHANNEL")
    A(y, x * den)


def test_lrn_rejects_even_size():
    with pytest.raises(ValueError):
        R.lrn(randn(1, 2, 2, 2), local_size=4)


# ---------------------------------------------------------------------------- softmax & losses


def test_softmax_hand_and_rows_sum_to_one():
    (p,) = R.softmax(np.array([[0.0, math.log(2.0)]]))
    A(p, [[1 / 3, 2 / 3]])
    x = randn(2, 5, 3, 2) * 50
    (p,) = R.softmax(x)
    A(p.sum(axis=1), 1.0)
    A(R.softmax(x + 1000.0)[0], p)  # shift-invariant, no overflow
    A(R.softmax(x, axis=-1)[0].sum(axis=-1), 1.0)


def test_softmax_with_loss_hand():
    loss, prob = R.softmax_with_loss(np.array([[0.0, math.log(3.0)]]), np.array([1.0]))
    assert loss.shape == ()
    A(loss, -math.log(0.75))
    A(prob, [[0.25, 0.75]])
    loss, _ = R.softmax_with_loss(np.zeros((2, 4)), np.array([0.0, 3.0]))
    A(loss, math.log(4.0))


def test_softmax_with_loss_normalization_modes():
    x = randn(2, 3, 2)
    label = np.array([[0.0, 2.0], [5.0, 1.0]])  # 5 is ignored
    (p,) = R.softmax(x)
    total = -(math.log(p[0, 0, 0]) + math.log(p[0, 2, 1]) + math.log(p[1, 1, 1]))
    for mode, norm in [("VALID", 3), ("FULL", 4), ("BATCH_SIZE", 2), ("NONE", 1)]:
        loss, _ = R.softmax_with_loss(x, label, ignore_label=5, normalization=mode)
        A(loss, total / norm)
    A(R.softmax_with_loss(x, label, ignore_label=5)[0], total / 3)  # default VALID
    A(R.softmax_with_loss(x, label, ignore_label=5, normalize=False)[0], total / 2)
    A(R.softmax_with_loss(x, label, ignore_label=5, normalize=True)[0], total / 3)
    both = R.softmax_with_loss(x, label, ignore_label=5, normalize=True, normalization="NONE")
    A(both[0], total)


def test_softmax_with_loss_all_ignored_is_zero():
    loss, _ = R.softmax_with_loss(randn(2, 3), np.array([1.0, 1.0]), ignore_label=1)
    A(loss, 0.0)


def test_softmax_with_loss_clamps_at_flt_min():
    loss, _ = R.softmax_with_loss(np.array([[0.0, -1000.0]]), np.array([1.0]))
    A(loss, -math.log(R.FLT_MIN))
    A(loss, 87.336544750553, rtol=1e-12)


def test_softmax_with_loss_other_axis():
    x = randn(3, 2, 4)
    label = rng.integers(0, 4, size=(3, 2)).astype(float)
    loss, prob = R.softmax_with_loss(x, label, axis=2)
    want = -np.mean(np.log(np.take_along_axis(prob, label.astype(int)[..., None], 2)))
    A(loss, want)


def test_sigmoid_cross_entropy_matches_naive_and_defaults_to_batch_size():
    x, t = randn(4, 3), rng.random((4, 3))
    s = 1 / (1 + np.exp(-x))
    naive = -np.sum(t * np.log(s) + (1 - t) * np.log(1 - s))
    (loss,) = R.sigmoid_cross_entropy_loss(x, t)
    assert loss.shape == ()
    A(loss, naive / 4)
    A(R.sigmoid_cross_entropy_loss(x, t, normalization="FULL")[0], naive / 12)
    A(R.sigmoid_cross_entropy_loss(x, t, normalize=True)[0], naive / 12)


def test_sigmoid_cross_entropy_stable_and_ignore():
    x = np.array([[1000.0, -1000.0, 0.0, 2.0]])
    t = np.array([[0.0, 1.0, 1.0, -1.0]])
    (loss,) = R.sigmoid_cross_entropy_loss(x, t, ignore_label=-1, normalization="VALID")
    A(loss, (1000.0 + 1000.0 + math.log(2.0)) / 3)


def test_euclidean_loss_hand():
    (loss,) = R.euclidean_loss(np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((2, 2)))
    A(loss, 30.0 / 4.0)


def test_contrastive_loss_hand():
    a = np.zeros((3, 2, 1, 1))
    b = np.array([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]]).reshape(3, 2, 1, 1)
    sim = np.array([1.0, 0.0, 0.0])
    A(R.contrastive_loss(a, b, sim)[0], (25.0 + 0.25) / 6)
    A(R.contrastive_loss(a, b, sim, legacy_version=True)[0], (25.0 + 0.75) / 6)
    A(R.contrastive_loss(a, b, sim, margin=6.0)[0], (25.0 + 5.5**2 + 1.0) / 6)


def test_hinge_and_multinomial_logistic_loss():
    x = np.array([[0.5, -2.0, 0.2], [1.5, 0.0, -1.0]])
    label = np.array([0.0, 1.0])
    # item 0: 1-0.5, max(0,1-2), 1+0.2 ; item 1: 1+1.5, 1-0, max(0, 1-1)
    A(R.hinge_loss(x, label)[0], (0.5 + 0 + 1.2 + 2.5 + 1.0 + 0) / 2)
    A(R.hinge_loss(x, label, norm="L2")[0], (0.25 + 1.44 + 6.25 + 1.0) / 2)
    p = np.array([[0.25, 0.75], [0.0, 1.0]])
    (loss,) = R.multinomial_logistic_loss(p, np.array([1.0, 0.0]))
    A(loss, (-math.log(0.75) - math.log(1e-20)) / 2)  # prob 0 is clamped at 1e-20


# ---------------------------------------------------------------------------- accuracy

SCORES = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.1], [0.2, 0.2, 0.6], [0.7, 0.1, 0.2]])
LABELS = np.array([1.0, 0.0, 2.0, 1.0])


def test_accuracy_hand_ties_count_against():
    acc, per = R.accuracy(SCORES, LABELS)
    assert acc.shape == () and per.shape == (3,)
    A(acc, 0.5)  # item 1 ties with class 1: wrong at top-1
    A(per, [0.0, 0.5, 1.0])
    A(R.accuracy(SCORES, LABELS, top_k=2)[0], 0.75)
    A(R.accuracy(SCORES, LABELS, top_k=3)[0], 1.0)


def test_accuracy_ignore_and_empty_classes():
    acc, per = R.accuracy(SCORES, LABELS, ignore_label=1)
    A(acc, 0.5)
    A(per, [0.0, 0.0, 1.0])
    acc, per = R.accuracy(SCORES[:1], LABELS[:1], ignore_label=1)
    A(acc, 0.0)
    A(per, [0.0, 0.0, 0.0])


def test_accuracy_spatial_matches_flattened():
    x = randn(2, 4, 3)
    label = rng.integers(0, 4, size=(2, 3)).astype(float)
    acc, per = R.accuracy(x, label, top_k=2)
    flat = x.transpose(0, 2, 1).reshape(6, 4)
    acc2, per2 = R.accuracy(flat, label.reshape(6), top_k=2)
    A(acc, acc2)
    A(per, per2)


# ---------------------------------------------------------------------------- structure


def test_concat_slice_split_roundtrip():
    a, b = randn(2, 3, 2), randn(2, 1, 2)
    (c,) = R.concat(a, b)
    assert c.shape == (2, 4, 2)
    p, q = R.slice(c, slice_point=[3])
    A(p, a)
    A(q, b)
    parts = R.slice(c, axis=-1, num_tops=2)
    A(parts[0][..., 0], c[..., 0])
    A(R.concat(*parts, axis=2)[0], c)
    A(R.concat(a, a, concat_dim=0)[0], np.vstack([a, a]))
    s = R.split(a, 3)
    assert len(s) == 3 and all(np.array_equal(t, a) for t in s)
    assert R.silence(a) == []
    with pytest.raises(ValueError):
        R.slice(c, num_tops=3)
    with pytest.raises(ValueError):
        R.slice(c, slice_point=[2, 2])


def test_flatten_and_reshape():
    x = randn(2, 3, 4, 5)
    assert R.flatten(x)[0].shape == (2, 60)
    assert R.flatten(x, axis=1, end_axis=2)[0].shape == (2, 12, 5)
    assert R.flatten(x, axis=-2)[0].shape == (2, 3, 20)
    A(R.flatten(x)[0].ravel(), x.ravel())
    assert R.reshape(x, [0, -1])[0].shape == (2, 60)
    assert R.reshape(x, [0, 0, -1, 2])[0].shape == (2, 3, 10, 2)
    assert R.reshape(x, [2, 2], axis=2, num_axes=1)[0].shape == (2, 3, 2, 2, 5)
    assert R.reshape(x, [1], axis=-1, num_axes=0)[0].shape == (2, 3, 4, 5, 1)
    assert R.reshape(x, [-1], axis=1)[0].shape == (2, 60)
    assert R.reshape(x, [1, 3], axis=1, num_axes=1)[0].shape == (2, 1, 3, 4, 5)
    with pytest.raises(ValueError):
        R.reshape(x, [7, -1])


def test_crop_hand():
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    (y,) = R.crop(x, (1, 1, 2, 3), offset=(1, 2))
    A(y[0, 0], [[8, 9, 10], [14, 15, 16]])
    (y,) = R.crop(x, np.zeros((1, 1, 2, 2)), offset=(3,))
    A(y[0, 0], [[21, 22], [27, 28]])
    (y,) = R.crop(randn(3, 4, 5, 6), (1, 2, 5, 6), axis=1)
    assert y.shape == (3, 2, 5, 6)
    with pytest.raises(ValueError):
        R.crop(x, (1, 1, 4, 4), offset=(3,))


def test_tile_and_reduction():
    x = np.arange(6.0).reshape(1, 2, 3)
    A(R.tile(x, axis=1, tiles=2)[0], np.concatenate([x, x], axis=1))
    A(R.reduction(x)[0], 15.0)
    A(R.reduction(x - 2, operation="ASUM", axis=1, coeff=2.0)[0], [2 * 9.0])
    A(R.reduction(x, operation="SUMSQ", axis=2)[0], [[5.0, 50.0]])
    A(R.reduction(x, operation="MEAN", axis=-1)[0], [[1.0, 4.0]])


def test_eltwise():
    a, b, c = randn(2, 3), randn(2, 3), randn(2, 3)
    A(R.eltwise(a, b)[0], a + b)
    A(R.eltwise(a, b, c, coeff=[1, -1, 0.5])[0], a - b + 0.5 * c)
    A(R.eltwise(a, b, c, operation="PROD")[0], a * b * c)
    A(R.eltwise(a, b, c, operation="MAX")[0], np.maximum(np.maximum(a, b), c))
    with pytest.raises(ValueError):
        R.eltwise(a, b, operation="PROD", coeff=[1, 2])


def test_argmax_ties_prefer_larger_index():
    x = np.array([[1.0, 3.0, 3.0, 2.0]])
    (y,) = R.argmax(x)
    assert y.shape == (1, 1, 1)
    A(y.ravel(), [2])
    A(R.argmax(x, top_k=3)[0].ravel(), [2, 1, 3])
    (y,) = R.argmax(x, top_k=2, out_max_val=True)
    A(y, [[[2, 1], [3, 3]]])


def test_argmax_axis_and_shapes():
    x = randn(2, 3, 4)
    (y,) = R.argmax(x, axis=1)
    assert y.shape == (2, 1, 4)
    A(y[:, 0], x.argmax(axis=1))
    (v,) = R.argmax(x, axis=1, top_k=2, out_max_val=True)
    A(v, -np.sort(-x, axis=1)[:, :2])
    (y,) = R.argmax(randn(5, 7, 1, 1))
    assert y.shape == (5, 1, 1, 1)


# ---------------------------------------------------------------------------- neurons


def test_neurons_hand():
    x = np.array([-2.0, -0.5, 0.0, 1.5])
    A(R.relu(x)[0], [0, 0, 0, 1.5])
    A(R.relu(x, negative_slope=0.1)[0], [-0.2, -0.05, 0, 1.5])
    A(R.absval(x)[0], [2, 0.5, 0, 1.5])
    A(R.sigmoid(np.array([0.0, math.log(3.0)]))[0], [0.5, 0.75])
    A(R.sigmoid(np.array([-1000.0, 1000.0]))[0], [0.0, 1.0])
    A(R.tanh(x)[0], np.tanh(x))
    A(R.elu(x, alpha=2.0)[0], [2 * (math.exp(-2) - 1), 2 * (math.exp(-0.5) - 1), 0, 1.5])
    A(R.bnll(np.array([0.0, 1000.0, -1000.0]))[0], [math.log(2.0), 1000.0, 0.0], atol=1e-300)
    A(R.power(x, power=2.0, scale=2.0, shift=1.0)[0], [9.0, 0.0, 1.0, 16.0])
    A(R.power(x, power=0.0)[0], 1.0)
    A(R.threshold(x, threshold=0.0)[0], [0, 0, 0, 1])
    A(R.clip(x, min=-1.0, max=1.0)[0], [-1, -0.5, 0, 1])
    A(R.swish(np.array([0.0, math.log(3.0)]), beta=1.0)[0], [0.0, 0.75 * math.log(3.0)])
    A(R.exp(np.array([0.0, 1.0]), base=2.0, scale=3.0, shift=1.0)[0], [2.0, 16.0])
    A(R.exp(np.array([1.0]))[0], [math.e])
    A(R.log(np.array([1.0, 7.0]), base=2.0, scale=1.0, shift=1.0)[0], [1.0, 3.0])


def test_prelu():
    x = randn(2, 3, 2, 2)
    a = np.array([0.1, -0.5, 2.0])
    (y,) = R.prelu(x, a)
    A(y, np.where(x > 0, x, x * a[None, :, None, None]))
    A(R.prelu(x, np.array([0.25]), channel_shared=True)[0], np.where(x > 0, x, 0.25 * x))


def test_dropout():
    x = randn(4, 5)
    mask = (rng.random((4, 5)) > 0.3).astype(float)
    A(R.dropout(x, mask, ratio=0.3)[0], x * mask / 0.7)
    A(R.dropout(x, mask, ratio=0.3, phase="TEST")[0], x)


def test_inner_product():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    w = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    (y,) = R.inner_product(x, w, np.array([0.5, 0.0, 1.0]))
    A(y, [[1.5, 3.0, -1.0], [3.5, 7.0, -3.0]])
    A(R.inner_product(x, w.T, transpose=True)[0], x @ w.T)
    x4 = randn(2, 3, 2, 2)
    w4 = randn(5, 12)
    A(R.inner_product(x4, w4)[0], x4.reshape(2, 12) @ w4.T)
    w2 = randn(5, 4)
    (y,) = R.inner_product(x4, w2, axis=2)
    assert y.shape == (2, 3, 5)
    A(y, x4.reshape(2, 3, 4) @ w2.T)


def test_embed():
    w = np.arange(12.0).reshape(4, 3)
    (y,) = R.embed(np.array([[3.0], [0.0]]), w, np.array([1.0, 0.0, 0.0]))
    A(y, [[[10.0, 10.0, 11.0]], [[1.0, 1.0, 2.0]]])


def test_scale_and_bias_broadcast():
    x = randn(2, 3, 4, 5)
    s, b = randn(3), randn(3)
    A(R.scale(x, s)[0], x * s[None, :, None, None])
    A(R.scale(x, s, b)[0], x * s[None, :, None, None] + b[None, :, None, None])
    s2 = randn(4, 5)
    A(R.scale(x, s2, axis=2)[0], x * s2)
    A(R.scale(x, np.array(3.0))[0], 3 * x)
    A(R.bias(x, s2, axis=-2)[0], x + s2)
    A(R.bias(x, b)[0], x + b[None, :, None, None])
    with pytest.raises(ValueError):
        R.scale(x, randn(4))


# ---------------------------------------------------------------------------- normalization


def test_batch_norm_hand():
    x = np.array([1.0, 3.0]).reshape(2, 1)
    zeros = np.zeros(1)
    y, m, v, f = R.batch_norm(x, zeros, zeros, zeros, use_global_stats=False, eps=0.0)
    A(y.ravel(), [-1.0, 1.0])
    A(m, [2.0])
    A(v, [2.0])  # m/(m-1) * biased variance 1
    A(f, [1.0])
    y, *blobs = R.batch_norm(x, m, v, f, use_global_stats=True, eps=0.0)
    A(y.ravel(), [-1 / math.sqrt(2), 1 / math.sqrt(2)])
    A(blobs[0], m)
    # factor 0 means "no statistics yet": mean and var are taken as 0
    y, *_ = R.batch_norm(x, m, v, np.zeros(1), use_global_stats=True, eps=0.25)
    A(y.ravel(), x.ravel() / 0.5)


def test_batch_norm_training_statistics_and_running_sums():
    x = randn(4, 3, 2, 5) * 3 + 1
    mean0, var0, f0 = randn(3), rng.random(3), np.array([2.0])
    kw = dict(use_global_stats=False, moving_average_fraction=0.9, eps=1e-5)
    y, m, v, f = R.batch_norm(x, mean0, var0, f0, **kw)
    mu = x.mean(axis=(0, 2, 3))
    sig2 = x.var(axis=(0, 2, 3))
    A(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    A(y.var(axis=(0, 2, 3)), sig2 / (sig2 + 1e-5))
    A(m, 0.9 * mean0 + mu)
    A(v, 0.9 * var0 + 40 / 39 * sig2)
    A(f, [0.9 * 2 + 1])
    yg, *same = R.batch_norm(x, m, v, f, use_global_stats=True)
    A(yg, (x - (m / f)[None, :, None, None]) / np.sqrt(v / f + 1e-5)[None, :, None, None])
    A(same[2], f)


def test_mvn():
    x = randn(2, 3, 4, 4) * 2 + 5
    (y,) = R.mvn(x)
    A(y.mean(axis=(2, 3)), 0.0, atol=1e-12)
    A(y.std(axis=(2, 3)), 1.0, rtol=1e-7)
    (y,) = R.mvn(x, across_channels=True, normalize_variance=False)
    A(y, x - x.mean(axis=(1, 2, 3), keepdims=True))
    x1 = np.array([1.0, 3.0]).reshape(1, 1, 1, 2)
    A(R.mvn(x1, eps=1.0)[0].ravel(), [-0.5, 0.5])  # eps added after the square root
