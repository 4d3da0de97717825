"""Source training: train a classifier on the owner's (authorized) domain and write a model artifact.

``train_source(domain, arch, cfg)`` trains on split ``train``, selects the model on split ``val``
(``cfg.select``: ``best`` keeps the weights of the epoch with the highest val accuracy, ties going to the
later epoch; ``last`` keeps the final weights), evaluates ``train`` (un-augmented), ``val`` and ``test``, and
writes an artifact whose card records arch, hparams, domain, normalization, seed, accuracy per split,
versions, sha256 and wall time. Seeded runs are bit-identical on CPU (one seed drives init, data order
and augmentation). The output path is checked before anything else, a NaN/inf loss raises
:class:`~domainlock.errors.TrainingDivergedError`, and the artifact is written atomically (Ctrl-C leaves
nothing behind).

:func:`fit` is the loop itself (train a given model in place on a ``DomainData``); methods can reuse it.
"""

from .loop import TrainConfig, fit, make_optimizer, make_scheduler, train_source

__all__ = ["TrainConfig", "fit", "make_optimizer", "make_scheduler", "train_source"]
