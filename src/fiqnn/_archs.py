"""The names of the teacher architectures in :data:`fiqnn.nets.models.MODELS`, without torch.

The CLI lists them in ``train-teacher --help`` and must not import torch to do so;
:mod:`fiqnn.nets.models` checks on import that its registry holds exactly these names, in this order.
"""

ARCHS = ("alexnet-s", "alexnet-bn", "tiny", "vgg11-bn", "resnet8", "resnet20", "resnet18", "mobilenetv2-s",
         "mobilenetv2", "mobilenetv2-w0.5", "mobilenetv3-small", "efficientnet-b0", "densenet121", "densenet-s",
         "shufflenetv2", "shufflenetv2-s")
