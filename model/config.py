"""Every number of the model and of its input pipeline, in one frozen place."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# Label index (0..79) -> COCO category id, mmdet's CocoDataset order.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)


@dataclass(frozen=True)
class PreprocessConfig:
    """The mmdet test pipeline (mode `mmdet`) and the Ascend recipe geometry (mode `static`)."""

    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)  # RGB
    mmdet_scale: tuple[int, int] = (1333, 800)  # (long, short) bound of keep-ratio resize
    size_divisor: int = 32  # mmdet mode pads bottom/right to a multiple of this
    static_size: int = 1216  # S of the S x S canvas in static mode


@dataclass(frozen=True)
class ModelConfig:
    """faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco, inference only."""

    num_classes: int = 80
    # backbone: ResNet-50, pytorch style, DCN v1 in the 3x3 conv of layer2..layer4
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    stage_planes: tuple[int, ...] = (64, 128, 256, 512)
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)
    stage_with_dcn: tuple[bool, ...] = (False, True, True, True)
    bn_eps: float = 1e-5
    # FPN
    fpn_channels: int = 256
    # anchors
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_scales: tuple[float, ...] = (8.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # RPN
    rpn_nms_pre: int = 1000  # per level
    rpn_nms_post: int = 1000
    rpn_nms_iou: float = 0.7
    rpn_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # RoI extraction
    roi_size: int = 7
    roi_sampling_ratio: int = 0
    roi_strides: tuple[int, ...] = (4, 8, 16, 32)
    roi_finest_scale: float = 56.0
    # box head
    fc_channels: int = 1024
    rcnn_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    # delta decoding: |ln(16/1000)|
    max_ratio: float = field(default=abs(math.log(16 / 1000)))


MODEL = ModelConfig()
PREPROCESS = PreprocessConfig()
