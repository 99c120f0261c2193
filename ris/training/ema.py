"""An exponential moving average of the trainable weights (``train.ema_decay``; null = off).

After every optimizer step ``ema = decay * ema + (1 - decay) * weights`` over the parameters the optimizer
trains; frozen parameters and buffers (BatchNorm statistics) are the live model's, so the EMA model is the
live model with its trainable parameters swapped for their averages. Validation, ``best.pt`` and the
published ``model.pt`` use the EMA weights; ``last.pt`` holds the raw weights and the averages, so a resumed
run continues bit-identically. Swapping (rather than keeping a second model) costs one copy of the
trainable weights only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["WeightEMA", "build_ema", "ema_weights"]


class WeightEMA:
    """Averages of a module's trainable parameters, by name; :meth:`applied` puts them in the module."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: {decay!r} is not in [0, 1) (null turns the EMA off)")
        self.decay = float(decay)
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        self._backup: dict[str, torch.Tensor] | None = None  # the raw weights while the averages are applied

    def _params(self, module: torch.nn.Module) -> Iterator[tuple[torch.nn.Parameter, torch.Tensor]]:
        params = dict(module.named_parameters())
        for name, avg in self.shadow.items():
            yield params[name], avg

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """One step of the average, after an optimizer step (never while the averages are applied)."""
        if self._backup is not None:
            raise RuntimeError("WeightEMA.update while the EMA weights are applied")
        for p, avg in self._params(module):
            avg.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[None]:
        """The EMA weights in ``module`` for the duration; the raw ones come back after, also on an error."""
        if self._backup is not None:  # nested: already applied
            yield
            return
        with torch.no_grad():
            self._backup = {n: p.detach().clone() for n, p in module.named_parameters() if n in self.shadow}
            for p, avg in self._params(module):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                params = dict(module.named_parameters())
                for name, raw in self._backup.items():
                    params[name].copy_(raw)
            self._backup = None

    def averaged(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A model ``state_dict`` with the trainable weights replaced by their averages (for best.pt)."""
        return {k: self.shadow[k].clone() if k in self.shadow else v for k, v in state.items()}

    def raw(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A ``state_dict`` taken while the averages may be applied, with the raw weights (for last.pt)."""
        if self._backup is None:
            return state
        return {k: self._backup[k].clone() if k in self._backup else v for k, v in state.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averages of a ``last.pt``; the trainable parameters must be the same ones."""
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError(
                f"last.pt: its EMA covers other parameters than the model trains "
                f"({len(shadow)} saved, {len(self.shadow)} trainable)"
            )
        with torch.no_grad():
            for name, avg in self.shadow.items():
                avg.copy_(shadow[name])


def build_ema(module: torch.nn.Module, decay: float | None) -> WeightEMA | None:
    """The EMA for ``train.ema_decay`` (None when it is null), started from the current weights."""
    return None if decay is None else WeightEMA(module, float(decay))


@contextlib.contextmanager
def ema_weights(ema: WeightEMA | None, module: torch.nn.Module) -> Iterator[None]:
    """``ema.applied(module)``, or nothing when the EMA is off."""
    if ema is None:
        yield
    else:
        with ema.applied(module):
            yield
