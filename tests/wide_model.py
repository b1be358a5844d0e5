"""A deliberately over-wide CNN for the digits data: pruning half its parameters costs no accuracy
and saves measurable time, so an export of it should end with an OK verdict."""
from __future__ import annotations

from torch import nn


def wide_cnn(num_classes: int = 10) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 48), *block(48, 96), *block(96, 96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, num_classes))
