"""Synthetic demo, 1/8 labeled, deep teacher T_D: DeepLabv3+ ResNet-101 family trained with CPS + CutMix.

The dataset's recipe (small networks, 64 px crops, schedule) is furnace.config.synthetic_config; this
file states what differs from it and the values people change. Override anything on the command line:
`python train.py KEY=VALUE`.
"""
from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.labeled_ratio = 8
C.method = "cps"
C.arch = "resnet101"
C.epochs_per_ratio = {"16": 24, "8": 24, "4": 28, "2": 40}  # longer than the students (see README)
C.lr = 0.03  # the best of 0.01-0.2 from scratch (docs/notes.md)
C.export_teacher = ""  # "" -> <data_root>/model-weight/teachers/synthetic_1-8_resnet101.pth (what the students load)
