"""Synthetic demo, 1/8 labeled, wide teacher T_W: DeepLabv3+ Wide-ResNet-50-2 family trained with CPS + CutMix.

The dataset's recipe (small networks, 64 px crops, schedule) is furnace.config.synthetic_config; this
file states what differs from it and the values people change. Override anything on the command line:
`python train.py KEY=VALUE`.
"""
from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.labeled_ratio = 8
C.method = "cps"
C.arch = "wrn50_2"
C.epochs_per_ratio = {"16": 26, "8": 26, "4": 30, "2": 42}  # one epoch more than T_D: the wide family learns slower
C.lr = 0.05  # trains best a little hotter than T_D from scratch (docs/notes.md)
C.export_teacher = ""  # "" -> <data_root>/model-weight/teachers/synthetic_1-8_wrn50_2.pth (what the students load)
