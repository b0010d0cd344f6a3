"""Synthetic demo, 1/8 labeled, MGD student: ResNet-18 distilled from the two CPS teachers.

The dataset's recipe (small networks, 64 px crops, schedule) is furnace.config.synthetic_config; this
file states what differs from it and the values people change. Override anything on the command line:
`python train.py KEY=VALUE`.
"""
from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.labeled_ratio = 8
C.method = "mgd"
C.arch = "resnet18"
C.lambda_image = 0.004  # the VOC ResNet-18 values
C.lambda_region = 100.0
C.teacher_deep = ""  # "" -> <data_root>/model-weight/teachers/synthetic_1-8_resnet101.pth
C.teacher_wide = ""  # "" -> <data_root>/model-weight/teachers/synthetic_1-8_wrn50_2.pth
C.lr = 0.015  # synthetic_config's student lr
C.epochs_per_ratio = {"16": 4, "8": 4, "4": 5, "2": 8}  # the students' schedule (synthetic_config's)
# The student lr is the shared 0.015 of synthetic_config. The MGD objective adds four pixel-level
# cross-entropies (two teachers, labeled and unlabeled) to the supervised one; at the earlier 0.03 its
# steps were too large. MGD student, 208 iterations, seeds 0 / 1, 600 val images: with the current data
# and teachers 0.01 -> 42.3 / 37.1, 0.015 -> 42.4 / 43.1, 0.02 -> 47.5 / 37.7 mIoU; with the earlier
# data (any texture angle) and 520-iteration teachers 0.03 -> 34.6 / 40.5, 0.02 -> 37.6 / 41.1,
# 0.015 -> 39.3 / 42.0, 0.01 -> 36.8 / -.
