"""PASCAL VOC 2012, MGD student DeepLabv3+ ResNet-18 (OS16), teachers ResNet-101 + WRN-50-2.

The dataset's recipe is furnace.config.voc_config; this file states what differs from it and the values
people change. Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import voc_config

C = config = voc_config(__file__)
C.labeled_ratio = 8  # 1/N labeled: 16, 8, 4 or 2 selects the split lists, epochs and teacher files
C.method = "mgd"
C.arch = "resnet18"  # ImageNet weights: DATA/model-weight/resnet18.pth (torchvision or timm state dict)
C.lambda_image = 0.004  # λ1, semantic-sensitive, image level (mean over images)
C.lambda_region = 100.0  # λ2, content-aware, region level
C.lr = 0.0025
C.epochs_per_ratio = {"16": 32, "8": 34, "4": 40, "2": 60}  # constant total iterations
C.teacher_deep = ""  # "" -> DATA/model-weight/teachers/voc_1-<ratio>_resnet101.pth
C.teacher_wide = ""  # "" -> DATA/model-weight/teachers/voc_1-<ratio>_wrn50_2.pth
