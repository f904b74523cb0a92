"""The HDF5 feature store: schema, crash-safe writing, merging, reading into memory.

Reading:  ``from cache import load_cache, CacheMismatch``; CLI: ``python -m cache info FILE``.
Writing (used by extract/): ``PartWriter``, ``scan_parts``, ``merge_parts`` (``python -m cache merge``).
"""
from .reader import FeatureCache, check_attrs, load_cache, read_attrs
from .store import (IDENTITY_ATTRS, JSON_ATTRS, SCHEMA_VERSION, CacheError, CacheMismatch, CacheMissing,
                    FailureRecord, PartsState, PartWriter, VideoRecord, clear_outputs, code_version,
                    final_status, merge_parts, parts_dir, remove_stale_tmp, scan_parts, write_cache)

__all__ = ["FeatureCache", "load_cache", "read_attrs", "check_attrs", "CacheError", "CacheMismatch",
           "CacheMissing", "VideoRecord", "FailureRecord", "PartWriter", "PartsState", "scan_parts",
           "merge_parts", "write_cache", "final_status", "clear_outputs", "remove_stale_tmp", "parts_dir",
           "code_version", "SCHEMA_VERSION", "IDENTITY_ATTRS", "JSON_ATTRS"]
