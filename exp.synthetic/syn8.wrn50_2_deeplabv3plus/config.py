"""Synthetic demo, 1/8 labeled, wide teacher T_W: DeepLabv3+ Wide-ResNet-50-2 family trained with CPS + CutMix.

The shared demo recipe (small networks, 64 px crops, schedule) is furnace.config.synthetic_config;
this file states what differs. Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.labeled_ratio = 8
C.method = "cps"
C.arch = "wrn50_2"
C.epochs_per_ratio = {"16": 10, "8": 10, "4": 12, "2": 16}  # longer than the students (see README)
