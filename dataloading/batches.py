"""Endless, resumable batches from a reference-format dataset for the single-process trainer.

A seeded permutation per epoch; the position (epoch, index) is the whole state, so a resume neither
repeats nor skips an image. Optional horizontal flips mirror the camera as well as the pixels.
"""

import numpy as np
import torch

from eg3d.camera import mirror_label

from .reference_format import ReferenceDataset


class DatasetBatches:
    def __init__(self, dataset: ReferenceDataset, *, batch_size: int, seed: int = 0, xflip: bool = False,
                 device: torch.device | str = "cpu"):
        self.dataset, self.batch_size, self.seed, self.xflip = dataset, batch_size, seed, xflip
        self.device = torch.device(device)
        self.epoch, self.index = 0, 0
        self._epoch_plan: tuple[int, np.ndarray, np.ndarray] | None = None

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, flips) of the current epoch, computed once per epoch."""
        if self._epoch_plan is None or self._epoch_plan[0] != self.epoch:
            self._epoch_plan = (self.epoch, self._order(self.epoch), self._flips(self.epoch))
        return self._epoch_plan[1], self._epoch_plan[2]

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def _flips(self, epoch: int) -> np.ndarray:
        if not self.xflip:
            return np.zeros(len(self.dataset), dtype=bool)
        return np.random.default_rng([self.seed, epoch, 1]).random(len(self.dataset)) < 0.5

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 [B,3,R,R] in [-1, 1], cameras float32 [B,25]) on the device."""
        images, labels = [], []
        while len(images) < self.batch_size:
            order, flips = self._plan()
            i = int(order[self.index])
            image, label = self.dataset[i]
            image = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
            label = torch.from_numpy(np.asarray(label, dtype=np.float32))
            if flips[self.index]:
                image, label = image.flip(-1), mirror_label(label)
            images.append(image)
            labels.append(label)
            self.index += 1
            if self.index == len(self.dataset):
                self.epoch, self.index = self.epoch + 1, 0
        images = torch.stack(images).to(self.device, torch.float32) / 127.5 - 1
        return images, torch.stack(labels).to(self.device)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]
