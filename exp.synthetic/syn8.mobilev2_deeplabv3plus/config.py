"""Synthetic demo, 1/8 labeled, MGD student: MobileNet-v2 (OS32) distilled from the two CPS teachers.

Not a stage of exp.synthetic/pipeline.py: it trains from the teachers a pipeline run exported (the second
student of README "Deploy"). The dataset's recipe is furnace.config.synthetic_config; this file states what
differs from it and the values people change. Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import synthetic_config

C = config = synthetic_config(__file__)
C.labeled_ratio = 8
C.method = "mgd"
C.arch = "mobilenetv2"
C.lambda_image = 0.001  # the VOC MobileNet-v2 values
C.lambda_region = 50.0
C.teacher_deep = ""  # "" -> <data_root>/model-weight/teachers/synthetic_1-8_resnet101.pth
C.teacher_wide = ""  # "" -> <data_root>/model-weight/teachers/synthetic_1-8_wrn50_2.pth
C.lr = 0.015  # synthetic_config's student lr, as the ResNet-18 MGD student
C.epochs_per_ratio = {"16": 16, "8": 16, "4": 20, "2": 32}  # the students' schedule (synthetic_config's)
