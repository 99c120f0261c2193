"""``train.ema_decay``: the EMA of the trainable weights, what validation and model.pt use, and exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ris.training.checkpoint import load_checkpoint
from ris.training.run import WeightEMA
from tests.helpers import make_config, train_here

DECAY = 0.9


def test_ema_follows_the_hand_computed_average_and_swaps_back():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    net[1].weight.requires_grad_(False)  # frozen: not averaged
    ema = WeightEMA(net, DECAY)
    assert set(ema.shadow) == {"0.weight", "0.bias", "1.bias"}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    expected = {n: p.detach().double().clone() for n, p in net.named_parameters() if p.requires_grad}
    for _ in range(4):
        net(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update(net)
        for n, p in net.named_parameters():
            if n in expected:
                expected[n] = DECAY * expected[n] + (1 - DECAY) * p.detach().double()
    for n, value in expected.items():
        torch.testing.assert_close(ema.shadow[n].double(), value, rtol=1e-6, atol=1e-7)

    raw = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with ema.applied(net):
            state = net.state_dict()
            assert torch.equal(state["0.weight"], ema.shadow["0.weight"])  # the averages are in the model
            assert torch.equal(state["1.running_mean"], raw["1.running_mean"])  # buffers: the live ones
            assert torch.equal(state["1.weight"], raw["1.weight"])  # frozen: the live one
            assert all(torch.equal(v, raw[k]) for k, v in ema.raw(net.state_dict()).items())  # for last.pt
            raise RuntimeError("boom")
    assert all(torch.equal(v, raw[k]) for k, v in net.state_dict().items())  # raw weights back after an error
    assert not torch.equal(raw["0.weight"], ema.shadow["0.weight"])


def test_ema_decay_is_checked():
    with pytest.raises(ValueError, match="train.ema_decay"):
        WeightEMA(torch.nn.Linear(2, 2), 1.0)


def record_raw_weights(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The trainable weights at the EMA's start and after every optimizer step, as the run sees them."""
    steps: list[dict[str, torch.Tensor]] = []
    init, update = WeightEMA.__init__, WeightEMA.update

    def init_and_record(self, module, decay):
        init(self, module, decay)
        steps[:] = [{k: v.clone() for k, v in self.shadow.items()}]

    def update_and_record(self, module):
        update(self, module)
        params = dict(module.named_parameters())
        steps.append({k: params[k].detach().clone() for k in self.shadow})

    monkeypatch.setattr(WeightEMA, "__init__", init_and_record)
    monkeypatch.setattr(WeightEMA, "update", update_and_record)
    return steps


def recomputed_ema(steps: list[dict[str, torch.Tensor]], upto: int) -> dict[str, torch.Tensor]:
    """The EMA over the recorded raw weights of global steps 1..``upto``, with the engine's float32 ops."""
    ema = {k: v.clone() for k, v in steps[0].items()}
    for raw in steps[1 : upto + 1]:
        for k, v in ema.items():
            v.mul_(DECAY).add_(raw[k], alpha=1.0 - DECAY)
    return ema


@pytest.fixture(scope="module")
def ema_reference(prepared_tiny, store, tmp_path_factory) -> dict[str, Any]:
    """An uninterrupted EMA run (2 epochs x 3 steps), its raw weights per step, and the weights validated."""
    mp = pytest.MonkeyPatch()
    try:
        steps = record_raw_weights(mp)
        validated: list[dict[str, torch.Tensor]] = []
        from ris.training import train as train_module

        inner = train_module._validate

        def validate_and_record(run, epoch):
            validated.append({k: v.detach().clone() for k, v in run.core.state_dict().items()})
            return inner(run, epoch)

        mp.setattr(train_module, "_validate", validate_and_record)
        out = tmp_path_factory.mktemp("ema_reference") / "run"
        train_here(make_config(prepared_tiny, store, experiment="ema", ema_decay=DECAY), out)
    finally:
        mp.undo()
    return {"out": out, "steps": list(steps), "validated": validated}


def test_validation_and_model_pt_use_the_ema_of_the_raw_weights(ema_reference):
    out, steps = ema_reference["out"], ema_reference["steps"]
    assert len(steps) == 1 + 6  # start + 2 epochs x 3 steps
    last, best = load_checkpoint(out / "work" / "last.pt"), load_checkpoint(out / "model.pt")
    final = recomputed_ema(steps, 6)
    for k, v in final.items():
        assert torch.equal(last["ema"]["shadow"][k], v), k  # last.pt: the averages ...
        assert torch.equal(last["model"][k], steps[6][k]), k  # ... and the raw weights, for resume
    assert any(not torch.equal(final[k], steps[6][k]) for k in final)
    at_best = recomputed_ema(steps, best["global_step"])
    for k, v in at_best.items():
        assert torch.equal(best["model"][k], v), k  # model.pt: the EMA weights of the best validation
    assert any(not torch.equal(best["model"][k], steps[best["global_step"]][k]) for k in at_best)
    # Each validation (after epochs 1 and 2, global steps 3 and 6) ran on the EMA weights.
    assert len(ema_reference["validated"]) == 2
    for seen, step in zip(ema_reference["validated"], (3, 6), strict=True):
        for k, v in recomputed_ema(steps, step).items():
            assert torch.equal(seen[k], v), k


def test_resume_with_ema_is_bit_identical(prepared_tiny, store, ema_reference, tmp_path, monkeypatch):
    from ris.training import train as train_module

    cfg = make_config(prepared_tiny, store, experiment="ema", ema_decay=DECAY)
    out: Path = tmp_path / "crashed"
    step = train_module.train_step

    def crash_before_step_6(run, epoch, share):  # last.pt was written at global step 4 (checkpoint_every_steps 2)
        if run.state.global_step == 5:
            raise RuntimeError("crash")
        return step(run, epoch, share)

    monkeypatch.setattr(train_module, "train_step", crash_before_step_6)
    with pytest.raises(RuntimeError, match="crash"):
        train_here(cfg, out)
    assert load_checkpoint(out / "work" / "last.pt")["global_step"] == 4
    monkeypatch.setattr(train_module, "train_step", step)
    train_here(cfg, out)  # resumes from global step 4

    ref_dir = ema_reference["out"]
    ref, got = load_checkpoint(ref_dir / "work" / "last.pt"), load_checkpoint(out / "work" / "last.pt")
    for name, tensor in ref["model"].items():
        assert torch.equal(got["model"][name], tensor), f"model.{name} differs"
    for name, tensor in ref["ema"]["shadow"].items():
        assert torch.equal(got["ema"]["shadow"][name], tensor), f"ema.{name} differs"
    best_ref, best_got = load_checkpoint(ref_dir / "model.pt"), load_checkpoint(out / "model.pt")
    assert all(torch.equal(best_got["model"][k], v) for k, v in best_ref["model"].items())
    assert best_got["val"] == best_ref["val"]
