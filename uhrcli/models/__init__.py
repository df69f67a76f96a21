"""Model registry. Importing this package registers every built-in network."""
from .base import ModelInfo, default_class_names, default_palette
from .registry import UnknownModelError, create_model, list_models, register_model
from . import fcn  # noqa: F401  (registers fcn-tiny)
from . import identity  # noqa: F401  (registers identity, the zero-cost model)

__all__ = ["ModelInfo", "create_model", "list_models", "register_model", "UnknownModelError",
           "default_class_names", "default_palette"]
from .checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402

__all__ += ["build_model", "load_checkpoint", "save_checkpoint"]
from . import isdnet  # noqa: F401,E402  (registers isdnet-r18/-r50/-r18-psp, deeplabv3-r18[-down4])
from . import pgnet  # noqa: F401,E402  (registers pgnet)
from . import pspnet  # noqa: F401,E402  (registers pspnet-r18/-r50[-down2/-down4], isdnet-psp)
from . import stdcseg  # noqa: F401,E402  (registers stdc1-seg, stdc2-seg)
from . import bisenet  # noqa: F401,E402  (registers bisenetv1-r18, bisenetv2)
from . import icnet  # noqa: F401,E402  (registers icnet)
from . import segformer  # noqa: F401,E402  (registers segformer-b0[-down2/-down4], isdnet-segformer-b0)
