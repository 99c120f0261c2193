"""Torch dataset over a prepared split table.

Images are resized to ``image_size`` x ``image_size`` (bilinear, antialiased like Pillow's) and normalised
with ImageNet statistics; ground-truth masks are decoded from the RLE and resized with nearest neighbour,
as LAVT does. No flips or crops: expressions say "left" and "right".

Speed (``benchmarks/data_path.py``): Pillow decodes (libjpeg-turbo); the uint8 image is resized by
torchvision's vectorised antialiased bilinear kernel (Pillow's ``resize(BILINEAR)`` within one grey level,
2-3x faster) and normalised in one fused multiply-subtract; targets are uint8. Per DataLoader worker
that is about 1.6x the samples/s of the former all-Pillow + NumPy item at 480 px. (torchvision's
``decode_jpeg`` saves only ~0.2 ms more per image and is deprecated in favour of TorchCodec.)

* Evaluation mode: one item per (ref, sentence) row, the protocol's sample.
* Training mode: one item per ref with one of its sentences drawn per epoch (as LAVT's loader does),
  deterministically from (seed, epoch, ref) so an interrupted and resumed run sees the same data.
* Instance targets (methods whose N masks are object hypotheses: ``RISModel.uses_instances``): after
  :meth:`ReferSplit.attach_instances` (``instances.parquet`` of the prepared dataset), an item also carries
  every object of its image as a mask at the model's mask resolution, padded to the most objects of any image
  of the split, their count, and which of them the sentence refers to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from ris.data.refer import decode_rle
from ris.data.tokenizer import encode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: (x / 255 - mean) / std as one multiply-subtract: x * _SCALE - _SHIFT.
_SCALE = (1.0 / (255.0 * torch.tensor(IMAGENET_STD))).view(3, 1, 1)
_SHIFT = (torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, H, W) uint8 image resized to (3, size, size), bilinear with antialiasing (as Pillow's BILINEAR)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return TF.resize(image, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) uint8 image as float32 normalised with the ImageNet mean and std."""
    out = torch.empty(image.shape, dtype=torch.float32)
    torch.mul(image, _SCALE, out=out)
    return out.sub_(_SHIFT)


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image as RGB, resized to (size, size) (bilinear) and normalised: a (3, size, size) float tensor."""
    rgb = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB"))).permute(2, 0, 1)
    return normalise(resize_image(rgb, size))


def decode_image(path: Path) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 RGB tensor (Pillow's pixels, channels last in memory)."""
    try:
        with Image.open(path) as im:
            pixels = np.array(im if im.mode == "RGB" else im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except OSError as e:
        raise OSError(f"{path}: not a readable image ({e})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def load_image(path: Path, size: int) -> torch.Tensor:
    """An RGB image file as a normalised (3, size, size) float tensor."""
    return normalise(resize_image(decode_image(path), size))


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """A (H, W) 0/1 mask resized to (size, size) with nearest neighbour, as uint8.

    uint8, not int64: a DataLoader worker copies every target into shared memory, and at 480 px an int64
    target is 1.8 MB against 0.2 MB (losses and metrics take any 0/1 dtype).
    """
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.shape != (size, size):
        return torch.from_numpy(np.array(Image.fromarray(mask).resize((size, size), Image.NEAREST)))
    return torch.from_numpy(np.ascontiguousarray(mask))


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
        # Plain lists: an item reads four fields, and DataFrame.iloc costs more than decoding the mask.
        self._files = self.table["file_name"].tolist()
        self._rles = self.table["rle"].tolist()
        self._heights = self.table["height"].astype(int).tolist()
        self._widths = self.table["width"].astype(int).tolist()
        # Rows of each ref, in table order: a training item is a ref.
        groups = self.table.groupby("ref_id", sort=False).indices
        self.ref_rows = [np.asarray(rows) for rows in groups.values()]
        self._objects: dict[int, list[tuple[int, str]]] | None = None
        self.instance_items: int | None = None

    def attach_instances(
        self, instances: pd.DataFrame, instance_size: int | None = None, first: int | None = None
    ) -> None:
        """From now on, items carry their image's objects (:meth:`instance_targets`) at ``instance_size``
        (default: half the image size, twice the resolution of every method's mask logits: the masks learn
        finer outlines than at their own resolution, docs/masks.md, for a quarter of the memory of full size).
        ``first`` (evaluation): only items ``0 .. first - 1`` carry them; the others decode none."""
        self.instance_size = instance_size or self.image_size // 2
        self.instance_items = first
        table = self.table if first is None else self.table.iloc[:first]
        images = set(table["image_id"].astype(int))
        inst = instances[instances["image_id"].isin(images)]
        self._objects = {int(i): list(zip(g["ann_id"].astype(int), g["rle"])) for i, g in inst.groupby("image_id")}
        self.max_objects = max((len(v) for v in self._objects.values()), default=0) or 1
        self._image_ids = self.table["image_id"].astype(int).tolist()
        self._ann_ids = self.table["ann_id"].astype(int).tolist()

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
        image = load_image(self.images_dir / self._files[i], self.image_size)
        mask = decode_rle(self._rles[i], self._heights[i], self._widths[i])
        item = {
            "image": image,
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention[i],
            "target": resize_mask(mask, self.image_size),
            "row": torch.tensor(i),
        }
        if self._objects is not None and (self.instance_items is None or index < self.instance_items):
            item.update(self.instance_targets(i))
        return item

    def instance_targets(self, i: int) -> dict[str, torch.Tensor]:
        """Row ``i``'s image objects: ``instances`` (max_objects, s, s) uint8 (padded with empty masks),
        ``num_instances`` and ``target_instance`` (the referred object's index; -1 if it is not among them)."""
        assert self._objects is not None
        objects = self._objects.get(self._image_ids[i], [])
        s = self.instance_size
        out = torch.zeros(self.max_objects, s, s, dtype=torch.uint8)
        target = -1
        for k, (ann_id, rle) in enumerate(objects):
            out[k] = resize_mask(decode_rle(rle, self._heights[i], self._widths[i]), s)
            if ann_id == self._ann_ids[i]:
                target = k
        return {
            "instances": out,
            "num_instances": torch.tensor(len(objects)),
            "target_instance": torch.tensor(target),
        }
