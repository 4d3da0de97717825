"""Domains for domainlock: build, store, load, watermark, inspect.

Offline base domains (built from what package registries ship; nothing downloaded at run time):
``mnist``, ``uci-digits``, ``syn``, ``mnistm``, ``fashion``. Standard datasets (downloaded once from their
official releases, or given with ``--archive``/``--root``; :mod:`.standard`, docs/data.md): ``mnist-full``,
``usps``, ``svhn``, ``syndigits``, ``mnistm-full``, ``cifar10``, ``stl10`` and the folder datasets'
sub-domains ``visda:<d>``, ``officehome:<d>``, ``pacs:<d>``, ``domainnet:<d>``. Plus
``wm:<domain>[@key=value,...]``, any domain with the NTL-style ownership watermark applied at load time, and
``folder:<path>``, a user's image folder. See METHODS.md §5.
"""

from .folder import load_image_folder
from .grid import grid_size, save_grid
from .registry import (
    DomainSpec,
    all_domain_names,
    domain_choices,
    domain_names,
    format_domain,
    get_spec,
    parse_domain,
    standard_names,
)
from .storage import (
    build_domain,
    domain_dir,
    domain_info,
    is_available,
    is_built,
    load_domain,
    read_manifest,
    resolve_data_root,
)
from .types import SPLITS, DomainData, require_classes
from .watermark import WatermarkSpec, apply_watermark, parse_watermark

__all__ = [
    "SPLITS", "DomainData", "DomainSpec", "WatermarkSpec", "all_domain_names", "apply_watermark", "build_domain",
    "domain_choices",
    "domain_dir", "domain_info", "domain_names", "format_domain", "get_spec", "grid_size", "is_available",
    "is_built", "load_domain", "load_image_folder", "parse_domain", "parse_watermark", "read_manifest",
    "require_classes", "resolve_data_root", "save_grid", "standard_names",
]
