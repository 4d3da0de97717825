"""Offline domains for domainlock: build, store, load, watermark, inspect.

Base domains (built from what package registries ship; nothing downloaded at run time):
``mnist``, ``uci-digits``, ``syn``, ``mnistm``, ``fashion``; plus ``wm:<domain>[@key=value,...]``,
any domain with the NTL-style ownership watermark applied at load time. See METHODS.md §5.
"""

from .folder import load_image_folder
from .grid import grid_size, save_grid
from .registry import DomainSpec, domain_choices, domain_names, format_domain, get_spec, parse_domain
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
    "SPLITS", "DomainData", "DomainSpec", "WatermarkSpec", "apply_watermark", "build_domain",
    "domain_choices",
    "domain_dir", "domain_info", "domain_names", "format_domain", "get_spec", "grid_size", "is_available",
    "is_built", "load_domain", "load_image_folder", "parse_domain", "parse_watermark", "read_manifest",
    "require_classes", "resolve_data_root", "save_grid",
]
