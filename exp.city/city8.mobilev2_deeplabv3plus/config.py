"""Cityscapes, MGD student DeepLabv3+ MobileNet-v2 (OS32), teachers ResNet-101 + WRN-50-2.

Edit the values below (or override any of them on the command line: `python train.py KEY=VALUE`).
"""
from furnace.config import city_config

C = config = city_config(__file__)

# -- data
C.labeled_ratio = 8  # 1/N labeled: 16, 8, 4 or 2 selects the split lists, epochs and teacher files
C.crop_size = 800
C.train_scales = [0.5, 0.75, 1.0, 1.5, 1.75, 2.0]
C.num_workers = 4

# -- model
C.arch = "mobilenetv2"
C.output_stride = 32
C.pretrained = "auto"  # DATA/model-weight/mobilenetv2.pth (torchvision or timm ImageNet state dict)

# -- method
C.method = "mgd"
C.sup_loss = "ohem"  # keep pixels with p_true <= max(0.7, the 50,000-th smallest) per image
# The original project released no Cityscapes MobileNet-v2 recipe: these are its ResNet-18 values.
C.lambda_image = 0.002  # semantic-sensitive, image level (mean over images)
C.lambda_region = 100.0  # content-aware, region level
C.teacher_deep = ""  # "" -> DATA/model-weight/teachers/city_1-<ratio>_resnet101.pth
C.teacher_wide = ""  # "" -> DATA/model-weight/teachers/city_1-<ratio>_wrn50_2.pth
C.teacher_bn = "eval"  # "train" reproduces the reference (teacher BN on batch statistics)

# -- optimisation: effective values for the global batch, on any number of GPUs
C.global_batch = 16
C.micro_batch = 0  # per-GPU forward batch; smaller -> gradient accumulation (0 = global / GPUs)
C.lr = 0.0025
C.momentum = 0.9
C.weight_decay = 0.0008  # not applied to biases and norm parameters
C.lr_power = 0.9  # poly schedule, per iteration
C.epochs_per_ratio = {"16": 128, "8": 137, "4": 160, "2": 240}  # constant total iterations
C.amp = "auto"  # bf16 on GPUs that support it, else fp16; off on CPU
C.sync_bn_backbone = True  # the original kept this backbone's BN per GPU (False, with micro_batch=2)

# -- evaluation
C.eval_crop = 800  # sliding window, stride ceil(2/3 * crop)
C.eval_scales = [1.0]
C.eval_flip = False
