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
C.epochs_per_ratio = {"16": 16, "8": 16, "4": 20, "2": 32}  # the students' schedule (synthetic_config's)
