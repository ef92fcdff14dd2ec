"""The names of the teacher architectures in :data:`fiqnn.nets.models.MODELS`, without torch.

The CLI lists them in ``train-teacher --help`` and must not import torch to do so;
:mod:`fiqnn.nets.models` checks on import that its registry holds exactly these names, in this order.
"""

ARCHS = ("alexnet-s", "alexnet-bn", "tiny", "vgg11-bn", "resnet8", "resnet20", "resnet18", "mobilenetv2-s")
