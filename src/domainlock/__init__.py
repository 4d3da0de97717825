"""domainlock: make trained image classifiers non-transferable.

The protected model stays accurate on the owner's authorized (source) domain and becomes useless on
unauthorized (target) domains, directly and after an attacker fine-tunes it.

The names below are the public API; everything else stays importable from its subpackage
(``domainlock.methods``, ``domainlock.attacks``, ``domainlock.data``, ...) but is not promised to stay put::

    import domainlock as dl

    src = dl.load_artifact("runs/src-mnist")
    prot = dl.protect(src, "sa-map", source="mnist", target="syn", out="runs/sa-map")
    print(dl.evaluate(prot.model, ["mnist", "syn"]))
"""

from ._version import __version__
from .artifact import load_artifact, save_artifact
from .attacks.finetune import finetune_attack
from .attacks.slc import slc
from .data import load_domain
from .evaluation import evaluate
from .methods import protect
from .models import build_model, wrap_model
from .ownership import verify

__all__ = ["__version__", "build_model", "evaluate", "finetune_attack", "load_artifact", "load_domain", "protect",
           "save_artifact", "slc", "verify", "wrap_model"]
