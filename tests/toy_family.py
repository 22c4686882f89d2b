"""A toy model family, registered by `tests/test_families.py` to prove that the engine and the CLI know no family.

A two-layer convolutional autoencoder with its own config, loss, single optimiser and phase names ("burn-in", then
"main"); no particles at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from dlp.config import ConfigBase, TrainConfig, option
from dlp.engine.objective import Objective


@dataclass
class ToyConfig(ConfigBase):
    image_size: int = option(32, "image size")
    in_channels: int = option(3, "image channels")
    width: int = option(8, "channels of the hidden layer")

    def __post_init__(self) -> None:
        self._normalise()


@dataclass
class ToyTrainConfig(TrainConfig):
    burn_in_epochs: int = option(1, "epochs of the burn-in phase (no weight decay on the code)")
    code_weight: float = option(0.1, "weight of the code's L2 penalty after the burn-in")


@dataclass
class ToyDecoded:
    rec: torch.Tensor


class ToyAutoencoder(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.encoder = nn.Conv2d(config.in_channels, config.width, 4, stride=2, padding=1)
        self.decoder = nn.ConvTranspose2d(config.width, config.in_channels, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(x))

    def decode(self, code: torch.Tensor) -> ToyDecoded:
        return ToyDecoded(torch.sigmoid(self.decoder(code)))

    def forward(self, x: torch.Tensor):
        code = self.encode(x)
        return code, self.decode(code).rec


class ToyObjective(Objective):
    loss_names: ClassVar[tuple[str, ...]] = ("loss", "rec", "code")

    def phase(self, epoch: int) -> str:
        return "burn-in" if epoch < self.train_config.burn_in_epochs else "main"

    def configure_optimizers(self, model):
        optimizer = torch.optim.SGD(model.parameters(), lr=self.train_config.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)]

    def loss(self, model, batch, *, epoch, phase, step=0):
        code, rec = model(batch["image"])
        terms = {"rec": ((rec - batch["image"]) ** 2).mean(), "code": code.pow(2).mean()}
        weight = 0.0 if phase == "burn-in" else self.train_config.code_weight
        return {"loss": terms["rec"] + weight * terms["code"], **terms}

    def figures(self, model, batch):
        return {"reconstructions": torch.cat([batch["image"][0], model(batch["image"][:1])[1][0]], dim=-1)}

    def validation_terms(self, model, x, *, official):
        code, rec = model(x)
        rec_term = ((rec - x) ** 2).flatten(1).sum(-1).mean()
        return {"elbo": rec_term + self.train_config.code_weight * code.pow(2).mean(), "rec": rec_term}
