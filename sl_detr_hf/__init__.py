"""SL-DETR: synchronized-loss DETR for oriented and axis-aligned object detection, on Hugging Face.

Importing the package registers SL-DETR with the transformers Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForObjectDetection`, `AutoImageProcessor`) and marks the classes for `register_for_auto_class`, so that
`save_pretrained` writes `auto_map` and copies the (self-contained) code files next to the weights: the saved folder
loads with `trust_remote_code=True` where this package is not installed. It also registers the
`"oriented-object-detection"` task of `transformers.pipeline`: with the package imported, the registered code serves
every saved folder, those that declare their own pipeline code (`sl_detr_hf.hub.save_for_hub`) included, without
`trust_remote_code` and without a prompt.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection, AutoVideoProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

from .configuration_sl_detr import DOTA_CLASSES, SlDetrConfig
from .convert.deformable_detr import SlDetrConversionReport
from .image_processing_sl_detr import SlDetrImageProcessor
from .loss_sl_detr import SlDetrHungarianMatcher, SlDetrLoss
from .modeling_sl_detr import (
    SlDetrForObjectDetection,
    SlDetrModel,
    SlDetrModelOutput,
    SlDetrObjectDetectionOutput,
    SlDetrPreTrainedModel,
)
from .pipeline_oriented_detection import register_pipeline as _register_pipeline

__version__ = "0.1.0"

__all__ = [
    "DOTA_CLASSES",
    "SlDetrConfig",
    "SlDetrConversionReport",
    "SlDetrForObjectDetection",
    "SlDetrHungarianMatcher",
    "SlDetrImageProcessor",
    "SlDetrLoss",
    "SlDetrModel",
    "SlDetrModelOutput",
    "SlDetrObjectDetectionOutput",
    "SlDetrPreTrainedModel",
]


def _register() -> None:
    AutoConfig.register(SlDetrConfig.model_type, SlDetrConfig, exist_ok=True)
    AutoModel.register(SlDetrConfig, SlDetrModel, exist_ok=True)
    AutoModelForObjectDetection.register(SlDetrConfig, SlDetrForObjectDetection, exist_ok=True)
    AutoImageProcessor.register(SlDetrConfig, image_processor_classes={"torchvision": SlDetrImageProcessor},
                                exist_ok=True)
    # No video processor. transformers' pipelines look for one (softly) in every model folder, and derive its remote
    # class from the image processor's `auto_map`: without this entry they asked "Do you wish to run the custom
    # code? [y/N]" for any saved SL-DETR folder, the package installed or not.
    AutoVideoProcessor.register(SlDetrConfig, video_processor_classes={}, exist_ok=True)
    SlDetrConfig.register_for_auto_class()
    SlDetrModel.register_for_auto_class("AutoModel")
    SlDetrForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
    SlDetrImageProcessor.register_for_auto_class("AutoImageProcessor")
    # transformers' object-detection pipeline checks the model against this table and logs an ERROR otherwise
    MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.setdefault(SlDetrConfig.model_type, SlDetrForObjectDetection.__name__)


_register()
_register_pipeline()  # the "oriented-object-detection" task of transformers.pipeline
