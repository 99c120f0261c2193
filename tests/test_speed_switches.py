"""Speed switches (issue 11): each keeps the official LAVT outputs within 1e-4 and is off by default."""

from __future__ import annotations

import json

import pytest
import torch

from ris.interop.lavt import load_official
from ris.models import ModelConfig, build_model
from tests.helpers import LAVT_REFERENCE, LAVT_TOLERANCE, lavt_differences

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_switches_off_by_default():
    model = build_model(ModelConfig(method="lavt"))
    assert model.backbone.channels_last_fusion is False


def test_channels_last_fusion_matches_official():
    """No NHWC->NCHW copies around the fusions: same outputs as the official code within 1e-4."""
    if not LAVT_REFERENCE.exists():
        pytest.fail(f"LAVT reference fixture missing: {LAVT_REFERENCE}")
    ref = torch.load(LAVT_REFERENCE / "io.pt", weights_only=True)
    model = load_official(LAVT_REFERENCE / "checkpoint.pth")
    model.backbone.channels_last_fusion = True
    diffs = lavt_differences(model, ref)
    print("\nchannels_last_fusion, max abs difference to the official LAVT:", json.dumps(diffs))
    assert all(d < LAVT_TOLERANCE for d in diffs.values()), diffs
