"""Cityscapes, deep teacher T_D: DeepLabv3+ ResNet-101 trained with CPS + CutMix (OHEM).

The dataset's recipe is furnace.config.city_config; this file states what differs from it and the values
people change. Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import city_config

C = config = city_config(__file__)
C.labeled_ratio = 8  # 1/N labeled: 16, 8, 4 or 2 selects the split lists, epochs and teacher files
C.method = "cps"
C.arch = "resnet101"  # ImageNet weights: DATA/model-weight/resnet101.pth (torchvision or timm state dict)
C.global_batch = 8  # the teachers' global batch (city_config: 16 for the students)
C.lr = 0.0025
C.epochs_per_ratio = {"16": 128, "8": 137, "4": 160, "2": 240}  # constant total iterations
C.export_teacher = ""  # "" -> DATA/model-weight/teachers/city_1-<ratio>_resnet101.pth (what the students load)
