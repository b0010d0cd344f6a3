"""PASCAL VOC 2012, deep teacher T_D: DeepLabv3+ ResNet-101 trained with CPS + CutMix.

The dataset's recipe is furnace.config.voc_config; this file states what differs from it and the values
people change. Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import voc_config

C = config = voc_config(__file__)
C.labeled_ratio = 8  # 1/N labeled: 16, 8, 4 or 2 selects the split lists, epochs and teacher files
C.method = "cps"
C.arch = "resnet101"  # ImageNet weights: DATA/model-weight/resnet101.pth (torchvision or timm state dict)
C.lr = 0.0025
C.epochs_per_ratio = {"16": 32, "8": 34, "4": 40, "2": 60}  # constant total iterations
C.export_teacher = ""  # "" -> DATA/model-weight/teachers/voc_1-<ratio>_resnet101.pth (what the students load)
