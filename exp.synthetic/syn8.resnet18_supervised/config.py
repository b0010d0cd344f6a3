"""Synthetic demo, 1/8 labeled, baseline: ResNet-18 student trained on the labeled images only ("Sup.").

The dataset's recipe (small networks, 64 px crops, schedule) is furnace.config.synthetic_config; this
file states what differs from it and the values people change. Override anything on the command line:
`python train.py KEY=VALUE`.
"""
from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.labeled_ratio = 8
C.method = "supervised"
C.arch = "resnet18"
C.lr = 0.015  # synthetic_config's student lr
C.epochs_per_ratio = {"16": 16, "8": 16, "4": 20, "2": 32}  # the students' schedule (synthetic_config's)
