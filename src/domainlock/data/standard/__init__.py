"""The field's standard datasets, built from their official releases (docs/data.md).

========================  ===================================================================
module                    datasets
========================  ===================================================================
:mod:`.digits`            ``mnist-full``, ``usps``, ``svhn``, ``syndigits``, ``mnistm-full``
:mod:`.objects`           ``cifar10``, ``stl10`` (their 9 shared classes)
:mod:`.folders`           ``visda:<d>``, ``officehome:<d>``, ``pacs:<d>``, ``domainnet:<d>``
:mod:`.fetch`             pinned digests, resumable download, ``--archive``, pickle refusal
:mod:`.parsers`           IDX, LIBSVM, .mat, CIFAR/STL binary, .npz readers
:mod:`.protocol`          the ``default`` and ``ntlbench`` split protocols
========================  ===================================================================

``data build <name>`` downloads a release once into ``<data_root>/downloads/<dataset>/`` (or takes it from
``--archive``/``--root``), verifies it, parses it without unpickling and stores the domain like the offline
ones (``<data_root>/<name>/``, a sub-domain ``officehome:Art`` in ``<data_root>/officehome/Art/``).
"""

from __future__ import annotations

from . import digits, folders, objects
from .base import KINDS, Standard
from .fetch import DOWNLOADS, RawFile, downloads_dir
from .protocol import PROTOCOLS

STANDARD: dict[str, Standard] = {s.name: s for s in (*digits.DATASETS, *objects.DATASETS, *folders.DATASETS)}
FOLDER_SETS = {fs.name: tuple(fs.domains) for fs in folders.FOLDER_SETS}

__all__ = ["DOWNLOADS", "FOLDER_SETS", "KINDS", "PROTOCOLS", "STANDARD", "RawFile", "Standard", "downloads_dir"]
