"""Kubernetes API errors, raised by the store and answered over HTTP as ``Status`` objects."""

from __future__ import annotations

from typing import Any


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None, *, success: bool = False
) -> dict[str, Any]:
    """A ``v1/Status``: clients (kopf included) read ``code``/``reason`` from it, not just the HTTP code."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if success else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    """An API failure with the HTTP code and ``Status.reason`` the real server would give."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, self.details)


def not_found(what: str, name: str, group: str = "") -> ApiError:
    return ApiError(404, "NotFound", f'{what} "{name}" not found', {"name": name, "group": group, "kind": what})


def already_exists(what: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{what} "{name}" already exists', {"name": name, "group": group, "kind": what}
    )


def conflict(what: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {what} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        {"name": name, "group": group, "kind": what},
    )


def invalid(kind: str, name: str, field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {field}: {message}',
        {"name": name, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)
