"""Architectures of the zoo; each takes ``act=`` (an activation name) and carries normalisation."""

from models.architectures._common import CIFAR10_MEAN, CIFAR10_STD, ModelMeta, Normalize
from models.architectures.resnet import BasicBlock, CifarResNet
from models.architectures.vgg import VGG16, CifarVGG

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "ModelMeta", "Normalize",
    "BasicBlock", "CifarResNet", "CifarVGG", "VGG16",
]
