"""Synthetic demo, 1/8 labeled, baseline: ResNet-18 student trained on the labeled images only ("Sup.").

The shared demo recipe (small networks, 64 px crops, schedule) is furnace.config.synthetic_config;
this file states what differs. Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.labeled_ratio = 8
C.method = "supervised"
C.arch = "resnet18"
