"""The HDF5 feature store: schema, crash-safe writing, merging, reading into memory.

Reading:  ``from cache import load_cache, CacheMismatch``; CLI: ``python -m cache info FILE``.
Writing (used by extract/): ``PartWriter``, ``scan_parts``, ``merge_parts`` (``python -m cache merge``),
``sync_labels`` (refresh the label datasets of a complete cache; features are kept).
"""
from .reader import FeatureCache, check_attrs, load_cache, read_attrs
from .store import (IDENTITY_ATTRS, JSON_ATTRS, LABEL_FIELDS, SCHEMA_VERSION, CacheError, CacheMismatch,
                    CacheMissing, CacheWriteError, FailureRecord, PartsState, PartWriter, VideoRecord,
                    check_free_space, check_not_folder, clear_outputs, code_version, describe_label_changes,
                    final_status, labels_sha256, merge_parts, parts_dir, remove_stale_tmp, scan_parts,
                    sync_labels, write_cache)

__all__ = ["FeatureCache", "load_cache", "read_attrs", "check_attrs", "CacheError", "CacheMismatch",
           "CacheMissing", "VideoRecord", "FailureRecord", "PartWriter", "PartsState", "scan_parts",
           "merge_parts", "write_cache", "final_status", "clear_outputs", "remove_stale_tmp", "parts_dir",
           "code_version", "SCHEMA_VERSION", "IDENTITY_ATTRS", "JSON_ATTRS", "LABEL_FIELDS", "CacheWriteError",
           "check_free_space", "check_not_folder", "describe_label_changes", "labels_sha256", "sync_labels"]
