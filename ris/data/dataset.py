"""Torch dataset over a prepared split table.

Images are resized to ``image_size`` x ``image_size`` (bilinear) and normalised with ImageNet statistics;
ground-truth masks are decoded from the RLE and resized with nearest neighbour, as LAVT does. No
flips or crops: expressions say "left" and "right".

* Evaluation mode: one item per (ref, sentence) row, the protocol's sample.
* Training mode: one item per ref with one of its sentences drawn per epoch (as LAVT's loader does),
  deterministically from (seed, epoch, ref) so an interrupted and resumed run sees the same data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from ris.data.refer import decode_rle
from ris.data.tokenizer import encode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB PIL image resized to (size, size) (bilinear) and normalised: a (3, size, size) float tensor."""
    im = image.resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def load_image(path: Path, size: int) -> torch.Tensor:
    """An RGB image file as a normalised (3, size, size) float tensor."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except OSError as e:
        raise OSError(f"{path}: not a readable image ({e})") from None
    return image_tensor(rgb, size)


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """A (H, W) 0/1 mask resized to (size, size) with nearest neighbour, as int64."""
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST))
    return torch.from_numpy(mask.astype(np.int64))


class ReferSplit(Dataset):
    """Samples of one prepared split: image, token ids, attention mask, target mask and ids."""

    def __init__(
        self,
        table: pd.DataFrame,
        images_dir: Path,
        image_size: int,
        tokenizer,
        max_tokens: int,
        train: bool = False,
        seed: int = 0,
    ):
        self.table = table.reset_index(drop=True)
        self.images_dir = Path(images_dir)
        self.image_size = image_size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.input_ids, self.attention = encode(tokenizer, self.table["sentence"].tolist(), max_tokens)
        # Rows of each ref, in table order: a training item is a ref.
        groups = self.table.groupby("ref_id", sort=False).indices
        self.ref_rows = [np.asarray(rows) for rows in groups.values()]

    def set_epoch(self, epoch: int) -> None:
        """Select which sentence of each ref the training items use in this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ref_rows) if self.train else len(self.table)

    def row_index(self, index: int) -> int:
        if not self.train:
            return index
        rows = self.ref_rows[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return int(rows[rng.integers(len(rows))])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self.row_index(index)
        row = self.table.iloc[i]
        image = load_image(self.images_dir / row["file_name"], self.image_size)
        mask = decode_rle(row["rle"], int(row["height"]), int(row["width"]))
        return {
            "image": image,
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention[i],
            "target": resize_mask(mask, self.image_size),
            "row": torch.tensor(i),
        }
