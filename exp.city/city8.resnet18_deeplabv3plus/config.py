"""Cityscapes, MGD student DeepLabv3+ ResNet-18 (OS16), teachers ResNet-101 + WRN-50-2.

The dataset's recipe is furnace.config.city_config; this file states what differs from it and the values
people change. Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import city_config

C = config = city_config(__file__)
C.labeled_ratio = 8  # 1/N labeled: 16, 8, 4 or 2 selects the split lists, epochs and teacher files
C.method = "mgd"
C.arch = "resnet18"  # ImageNet weights: DATA/model-weight/resnet18.pth (torchvision or timm state dict)
C.lambda_image = 0.002  # λ1, semantic-sensitive, image level (mean over images)
C.lambda_region = 100.0  # λ2, content-aware, region level
C.lr = 0.0025
C.epochs_per_ratio = {"16": 128, "8": 137, "4": 160, "2": 240}  # constant total iterations
C.teacher_deep = ""  # "" -> DATA/model-weight/teachers/city_1-<ratio>_resnet101.pth
C.teacher_wide = ""  # "" -> DATA/model-weight/teachers/city_1-<ratio>_wrn50_2.pth
