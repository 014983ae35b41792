"""The paper's networks and a small one for scikit-learn's digits.

Every model ends in an ``nn.Linear`` from the penultimate representation to the class logits: the
*ultimate layer* FedGrad inspects (paper, Definition 1).  Models return logits; the loss applies
the softmax (the authors' VGG-9 applied a softmax before CrossEntropyLoss, a bug not reproduced).
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import nn

from fedgrad_core.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", builtin="fedgrad_core.models")


def available_models() -> list[str]:
    return MODELS.names()


def make_model(name: str, *, in_channels: int, num_classes: int, seed: int) -> nn.Module:
    """A freshly initialised model; the initialisation depends on ``seed`` only.

    The global RNG is forked and restored, so building a model never disturbs the caller's RNG.
    """
    factory = MODELS.factory(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(in_channels=in_channels, num_classes=num_classes)


def ultimate_layer(model: Union[nn.Module, Mapping[str, torch.Tensor]]) -> tuple[str, str]:
    """State-dict keys (weight, bias) of the ultimate layer of a model or of its state: the last
    2-D floating ``weight`` in state-dict order (every model here ends in that ``nn.Linear``) and
    the ``bias`` of the same prefix, which need not exist (callers that need it check)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    weight_key = None
    for name, tensor in state.items():
        if torch.is_floating_point(tensor) and tensor.dim() == 2 and name.endswith("weight"):
            weight_key = name
    if weight_key is None:
        raise ValueError("no 2-D floating weight in the model's state: cannot find the ultimate layer")
    return weight_key, weight_key[: -len("weight")] + "bias"


@MODELS.register("digits_mlp")
class DigitsMLP(nn.Module):
    """Two hidden ReLU layers for 8x8 digits: trains in seconds on a CPU."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, image_size: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("lenet")
class LeNet(nn.Module):
    """The authors' EMNIST LeNet: conv 32, conv 64, max-pool, dropout, 9216 -> 128 -> classes."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(9216, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("cnn_mnist")
class CNNMnist(nn.Module):
    """The MNIST network of the DBA code (Xie et al. 2020): two 5x5 convolutions, 800 -> 500 -> 10."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(800, 500),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("vgg9")
class VGG9(nn.Module):
    """VGG-9 without batch norm (Wang et al. 2020; about 9.2M parameters for CIFAR-10)."""

    plan = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in self.plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("vgg9_narrow")
class VGG9Narrow(VGG9):
    """VGG-9 at a quarter of the width (16 ... 128 channels, 1/16 of the multiply-adds): the quick
    profile's CIFAR-10 network on a CPU.  Not the paper's; pages that use it say so."""

    plan = tuple(c if c == "M" else c // 4 for c in VGG9.plan)


@MODELS.register("vgg9_slim")
class VGG9Slim(VGG9):
    """VGG-9 at an eighth of the width (8 ... 64 channels, 145k parameters; measured on one CPU core
    about half the training time of ``vgg9_narrow`` per sample and a third of its evaluation
    time): the quick profile's CIFAR-10 network for the edge-case tables.  Not the paper's."""

    plan = tuple(c if c == "M" else c // 8 for c in VGG9.plan)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@MODELS.register("resnet18")
class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool), as in the DBA code's CIFAR experiments."""

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(self.stem(x)))


ModelFactory = Callable[[], nn.Module]
