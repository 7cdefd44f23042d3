"""Architectures of the zoo; each takes ``act=`` (an activation name) and carries normalisation."""

from models.architectures._common import CIFAR10_MEAN, CIFAR10_STD, ModelMeta, Normalize
from models.architectures.lipschitz import (
    LipschitzResNet,
    SNConv2d,
    SNLinear,
    lipschitz_upper_bound,
)
from models.architectures.resnet import BasicBlock, CifarResNet
from models.architectures.vgg import VGG16, CifarVGG

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "ModelMeta", "Normalize",
    "BasicBlock", "CifarResNet", "CifarVGG", "VGG16",
    "LipschitzResNet", "SNConv2d", "SNLinear", "lipschitz_upper_bound",
]
