"""Models: every classifier is split into an **encoder** g and a **head** h, ``f(x) = h(g(x))``.

Registered architectures (``arch_names()``): ``digitnet`` (small, fast CNN for 32 px digits), ``vgg11``,
``vgg13``, ``vgg16``, ``vgg19`` and their ``*_bn`` variants (CIFAR-size), ``resnet18`` (CIFAR-style).
``build_model(arch, num_classes=10, **kwargs)`` returns a :class:`Classifier` whose ``encoder`` starts
with a :class:`Normalize` module (mean/std kept as buffers), so **every model takes images in [0, 1]**;
the encoder ends in a flat feature vector ``[B, D]`` (``model.features(x)``) and ``model.head`` maps it
to logits. ``model.arch``/``model.arch_kwargs`` record how to rebuild it (an artifact's card stores them).

Adding an architecture::

    @register_arch("mynet")
    def mynet(num_classes=10, **kw) -> Classifier:
        return Classifier(encoder_with_norm(mean, std, ..., nn.Flatten(1)), nn.Linear(D, num_classes))

Using your own ``nn.Module`` (methods need to know where the encoder ends). Any one of:

1. ``wrap_model(module, encoder="features", head="classifier", flatten=True, mean=..., std=...)``:
   builds a :class:`Classifier` from two named submodules (shared, not copied); ``forward`` becomes
   ``head(flatten(encoder(x)))``.
2. Give your module attributes ``encoder`` and ``head`` such that ``forward(x) == head(encoder(x))``.
3. Declare the split on your class: ``domainlock_split = ("backbone", "fc")``.

``split_model(model) -> (encoder, head)`` accepts all of these (and a :class:`Classifier`); anything else
raises a :class:`~domainlock.errors.DomainlockError` saying how to name the split. To save/load a user
module use ``save_artifact`` as usual and ``load_artifact(path, model=YourModule())``; or, with no Python
at all, ``domainlock import`` (:mod:`.imported`): an artifact of arch ``imported`` that names your builder file.
"""

from . import digitnet as _digitnet  # noqa: F401  (registers the arch)
from . import imported as _imported  # noqa: F401  (registers ``imported``, built only from an artifact's card)
from . import resnet as _resnet  # noqa: F401
from . import vgg as _vgg  # noqa: F401
from .base import (
    ARCHS,
    SPLIT_HELP,
    UNLISTED,
    Classifier,
    Normalize,
    arch_names,
    as_classifier,
    build_model,
    count_params,
    encoder_with_norm,
    register_arch,
    reinitialize,
    split_model,
    wrap_model,
)
from .checks import check_finite_weights

__all__ = ["ARCHS", "SPLIT_HELP", "UNLISTED", "Classifier", "Normalize", "arch_names", "as_classifier", "build_model",
           "check_finite_weights", "count_params", "encoder_with_norm", "register_arch", "reinitialize", "split_model",
           "wrap_model"]
