"""Networks: every way to build one goes through `build_network(NetworkRequest(...), num_classes)`.

One module per job, each importing only the ones listed before it:
`registry` (builders by name), `zoo` (our networks), `libraries` (torchvision's and timm's),
`names` (looking names up, the one same-network check), `counting` (parameters, FLOPs), `attach`
(attention into any network), `classifier` (the classifier each network declares), `request`
(what a network is), `authors` (the authors' checkpoints renamed), `weights` (files read and
loaded), `build` (`build_network`, `create_model`), `pretrained` (`load_pretrained`,
`convert_file`) and `complexity` (the paper's tables beside our counts).
"""

from cbam.networks.attach import AttentionRecorder, attach, attention_modules, detach
from cbam.networks.build import build_network, create_model
from cbam.networks.names import list_models
from cbam.networks.pretrained import load_pretrained
from cbam.networks.registry import register_model
from cbam.networks.request import NetworkRequest

__all__ = [
    "AttentionRecorder",
    "NetworkRequest",
    "attach",
    "attention_modules",
    "build_network",
    "create_model",
    "detach",
    "list_models",
    "load_pretrained",
    "register_model",
]
