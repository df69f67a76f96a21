"""Resizes in whole-image coordinates: a window of the resized map equals the same window of F.interpolate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from uhrcli.geometry import halvings, nearest_indices, resize_window, source_span


@st.composite
def resize_case(draw):
    sh, sw = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    same = draw(st.booleans())
    dh, dw = (sh, sw) if same else (draw(st.integers(1, 90)), draw(st.integers(1, 90)))
    r0 = draw(st.integers(0, dh - 1))
    r1 = draw(st.integers(r0 + 1, dh))
    c0 = draw(st.integers(0, dw - 1))
    c1 = draw(st.integers(c0 + 1, dw))
    return (sh, sw), (dh, dw), (r0, r1, c0, c1), draw(st.integers(0, 3)), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=200, deadline=None)
@given(resize_case())
def test_window_of_resize_equals_resize_of_whole(case):
    (sh, sw), (dh, dw), (r0, r1, c0, c1), extra, seed = case
    g = torch.Generator().manual_seed(seed)
    whole = torch.randn(1, 2, sh, sw, generator=g)
    ref = F.interpolate(whole, size=(dh, dw), mode="bilinear", align_corners=False)[..., r0:r1, c0:c1]
    lo_r, hi_r = source_span(sh, dh, r0, r1)
    lo_c, hi_c = source_span(sw, dw, c0, c1)
    # the window a tile holds: the cells the resize needs, plus a few more on each side where there are some
    a, b = max(0, lo_r - extra), min(sh, hi_r + extra)
    c, d = max(0, lo_c - extra), min(sw, hi_c + extra)
    got = resize_window(whole[..., a:b, c:d], (a, c), (sh, sw), (r0, r1, c0, c1), (dh, dw))
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_a_window_missing_cells_is_refused_or_clamped():
    whole = torch.arange(100.0).view(1, 1, 10, 10)
    with pytest.raises(ValueError):
        resize_window(whole[..., 2:, 2:], (2, 2), (10, 10), (0, 4, 0, 4), (10, 10))
    with pytest.raises(ValueError):
        resize_window(whole[..., 2:, 2:], (2, 2), (10, 10), (0, 8, 0, 8), (20, 20))
    out = resize_window(whole[..., :5, :5], (0, 0), (10, 10), (0, 12, 0, 12), (20, 20), clamp=True)
    assert out.shape[-2:] == (12, 12)


@pytest.mark.parametrize("n", [1, 7, 250, 1000, 1111, 2448])
def test_nearest_indices_are_pytorchs(n):
    out = halvings(n, 2)
    x = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n)
    ref = F.interpolate(x, size=(1, out), mode="nearest")[0, 0, 0].long().numpy()
    assert np.array_equal(nearest_indices(n, out), ref)
