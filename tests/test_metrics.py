"""Metrics against a brute-force reference on random masks, including empty ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ris.metrics import THRESHOLDS, IoUAccumulator, intersection_union, summarize


def brute_force(preds: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
    ious, total_i, total_u = [], 0, 0
    for p, t in zip(preds, targets):
        i = u = 0
        for a, b in zip(p.ravel().tolist(), t.ravel().tolist()):
            i += int(a and b)
            u += int(a or b)
        ious.append(i / u if u else 0.0)
        total_i += i
        total_u += u
    out = {"oIoU": 100.0 * total_i / total_u, "mIoU": 100.0 * sum(ious) / len(ious)}
    for th in THRESHOLDS:
        out[f"P@{th}"] = 100.0 * sum(iou >= th for iou in ious) / len(ious)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_empty_masks(seed):
    rng = np.random.default_rng(seed)
    n, h, w = 40, 9, 7
    target = rng.random((n, h, w)) < rng.random((n, 1, 1))
    pred = target ^ (rng.random((n, h, w)) < 0.15)  # mostly right, some noise
    target[0] = False
    pred[0] = False  # both empty: IoU 0 by protocol
    target[1] = False  # empty target, non-empty prediction
    pred[2] = False  # empty prediction
    pred[3] = target[3]  # perfect
    acc = IoUAccumulator()
    for lo in range(0, n, 16):  # several batches
        acc.update(torch.from_numpy(pred[lo : lo + 16]), torch.from_numpy(target[lo : lo + 16]))
    got = acc.compute()
    want = brute_force(list(pred), list(target))
    assert acc.count == n
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


def test_iou_zero_when_union_empty_and_precision_threshold_inclusive():
    inter = np.array([0, 5, 9, 10])
    union = np.array([0, 10, 10, 10])
    m = summarize(inter, union)
    assert m["mIoU"] == pytest.approx(100 * (0 + 0.5 + 0.9 + 1.0) / 4)
    assert m["oIoU"] == pytest.approx(100 * 24 / 30)
    assert m["P@0.5"] == 75.0  # 0.5 counts (>=)
    assert m["P@0.9"] == 50.0


def test_oiou_differs_from_miou():
    # one large well-segmented object and one small missed one: oIoU >> mIoU
    m = summarize(np.array([100, 0]), np.array([100, 10]))
    assert m["oIoU"] == pytest.approx(100 * 100 / 110)
    assert m["mIoU"] == pytest.approx(50.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        intersection_union(torch.zeros(2, 3, 3, dtype=torch.bool), torch.zeros(2, 3, 4, dtype=torch.bool))


def test_summarize_refuses_no_samples():
    with pytest.raises(ValueError):
        summarize(np.zeros(0), np.zeros(0))
