"""The metadata checks the real API server makes, so operator bugs fail here and not in a cluster.

Only names and labels are checked: too-long or mis-cased generated names and label values are
the mistakes an operator makes most, and the ones that a permissive fake would let through.
"""

from __future__ import annotations

import re
from typing import Any

from mljob.testing.errors import ApiError, invalid

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

# Kinds whose names become DNS labels (service hostnames, namespace names).
_LABEL_NAMED = {"Namespace": _DNS1123_LABEL, "Service": _DNS1035_LABEL}


def _check_name(kind: str, name: str) -> None:
    pattern = _LABEL_NAMED.get(kind, _DNS1123_SUBDOMAIN)
    limit = 63 if kind in _LABEL_NAMED else 253
    if len(name) > limit:
        raise invalid(kind, name, "metadata.name", f"must be no more than {limit} characters")
    if not pattern.match(name):
        raise invalid(
            kind,
            name,
            "metadata.name",
            "a lowercase RFC 1123 name must consist of lower case "
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )


def _check_key(kind: str, name: str, field: str, key: str) -> None:
    prefix, _, local = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        raise invalid(kind, name, field, f"prefix part of {key!r} must be a DNS-1123 subdomain")
    if not local or len(local) > 63 or not _LABEL_NAME.match(local):
        raise invalid(
            kind,
            name,
            field,
            f"name part of {key!r} must be 63 characters or less, "
            "alphanumeric, '-', '_' or '.', starting and ending with an alphanumeric character",
        )


def validate_metadata(kind: str, body: dict[str, Any]) -> None:
    """Raise 422 Invalid on a bad name, label, annotation key or owner reference."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        raise ApiError(400, "BadRequest", "metadata must be an object")
    name = metadata.get("name") or ""
    _check_name(kind, name)
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict):
        raise invalid(kind, name, "metadata.labels", "must be a map of strings")
    for key, value in labels.items():
        _check_key(kind, name, "metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise invalid(
                kind,
                name,
                "metadata.labels",
                f"invalid value {value!r} for {key!r}: must be a string "
                "of 63 characters or less, alphanumeric, '-', '_' or '.'",
            )
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise invalid(kind, name, "metadata.annotations", "must be a map of strings")
    for key, value in annotations.items():
        _check_key(kind, name, "metadata.annotations", key)
        if not isinstance(value, str):
            raise invalid(kind, name, "metadata.annotations", f"value of {key!r} must be a string")
    for ref in metadata.get("ownerReferences") or []:
        if not isinstance(ref, dict) or not all(ref.get(k) for k in ("apiVersion", "kind", "name", "uid")):
            raise invalid(kind, name, "metadata.ownerReferences", "apiVersion, kind, name and uid are required")
    finalizers = metadata.get("finalizers") or []
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        raise invalid(kind, name, "metadata.finalizers", "must be a list of strings")
