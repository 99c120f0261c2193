"""``ris predict``: one checkpoint, one image file and one sentence in; the mask and an overlay out.

The checkpoint carries its configuration and vocabulary (``ris.training.checkpoint``), so nothing else is
needed: the image is resized to the model's input size as in evaluation, the sentence tokenized with
the checkpoint's tokenizer, and the predicted mask resized back to the image's own resolution.
Errors a user can fix (missing file, unreadable image, empty sentence, a file that is not a ris
checkpoint) raise ``FileNotFoundError`` / ``ValueError`` with one clear message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ris.utils import atomic_path

log = logging.getLogger(__name__)

OVERLAY_COLOR = (230, 40, 40)


@dataclass
class Prediction:
    """A predicted mask at the image's resolution, with what produced it."""

    mask: np.ndarray  # (H, W) bool
    image: Image.Image  # the input image, RGB
    sentence: str
    unknown_words: list[str]
    config: dict[str, Any]

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def read_image(path: Path) -> Image.Image:
    """An RGB image, or a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def unknown_words(tokenizer, sentence: str) -> list[str]:
    """Words of ``sentence`` the tokenizer maps to [UNK] (a vocabulary built from training sentences knows few)."""
    unk = getattr(tokenizer, "unk_token", "[UNK]")
    out = []
    for word in sentence.split():
        if unk in tokenizer.tokenize(word):
            out.append(word)
    return out


@torch.no_grad()
def predict(checkpoint: Path, image_path: Path, sentence: str, device: str = "cpu") -> Prediction:
    """Segment what ``sentence`` refers to in the image at ``image_path`` with the model in ``checkpoint``."""
    from ris.data.dataset import image_tensor
    from ris.data.tokenizer import encode
    from ris.training.checkpoint import load_checkpoint, model_from_checkpoint

    if sentence is None or not sentence.strip():
        raise ValueError("the sentence is empty: give the expression that refers to an object in the image")
    sentence = " ".join(sentence.split())
    image = read_image(image_path)
    ckpt = load_checkpoint(Path(checkpoint))
    model, tokenizer, config = model_from_checkpoint(ckpt)
    dev = torch.device(device)
    model.to(dev)
    size = int(config["model"]["image_size"])
    max_tokens = int(config["train"]["max_tokens"])
    ids, attention = encode(tokenizer, [sentence], max_tokens)
    unknown = unknown_words(tokenizer, sentence)
    if unknown:
        log.warning("words not in the model's vocabulary (read as [UNK]): %s", ", ".join(unknown))
    width, height = image.size
    x = image_tensor(image, size).unsqueeze(0).to(dev)
    mask = model.predict(x, ids.to(dev), attention.to(dev), (height, width))
    return Prediction(mask[0].cpu().numpy().astype(bool), image, sentence, unknown, config)


def overlay_image(image: Image.Image, mask: np.ndarray, color: tuple[int, int, int] = OVERLAY_COLOR) -> Image.Image:
    """The image with the mask tinted (50 %) and its boundary drawn in ``color``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    c = np.asarray(color, dtype=np.float32)
    out = rgb.copy()
    out[mask] = 0.5 * out[mask] + 0.5 * c
    inner = np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    out[mask & ~inner] = c
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def save_prediction(pred: Prediction, out_mask: Path, out_overlay: Path | None = None) -> dict[str, Any]:
    """Write the mask (8-bit PNG, 255 = referred object) and the overlay; returns a summary."""
    with atomic_path(Path(out_mask)) as tmp:
        Image.fromarray(pred.mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
    if out_overlay is not None:
        with atomic_path(Path(out_overlay)) as tmp:
            overlay_image(pred.image, pred.mask).save(tmp, format="PNG")
    return {
        "sentence": pred.sentence,
        "image_size": list(pred.image.size),
        "foreground_fraction": round(pred.foreground_fraction, 4),
        "unknown_words": pred.unknown_words,
        "run": pred.config.get("run"),
        "mask": str(out_mask),
        "overlay": str(out_overlay) if out_overlay else None,
    }
