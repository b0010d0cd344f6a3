"""Synthetic demo, 1/8 labeled, MGD student: ResNet-18 distilled from the two CPS teachers.

The shared demo recipe (small networks, 64 px crops, schedule) is furnace.config.synthetic_config;
this file states what differs. Override anything on the command line: `python train.py KEY=VALUE`.
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
# The MGD objective adds four pixel-level cross-entropies (two teachers, labeled and unlabeled) to the
# supervised one, so at the supervised students' lr its steps are several times larger. Student lr at
# 208 iterations (the 520-iteration teachers of an earlier recipe; seeds 0 / 1; 600 val images):
# MGD 0.03 -> 34.6 / 40.5, 0.02 -> 37.6 / 41.1, 0.015 -> 39.3 / 42.0, 0.01 -> 36.8 / -; the supervised
# student is best at 0.03 - 0.045 (0.015 -> 33.0 / 37.1, 0.03 -> 34.7 / 38.1, 0.045 -> 34.3 / 38.8),
# the CPS student does not move (0.015 -> 32.6 / 37.5, 0.03 -> 32.0 / 38.8).
C.lr = 0.015
