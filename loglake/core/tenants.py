"""What a tenant may be called: tenants become directory names in the data root."""

from __future__ import annotations

import re

_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

#: The rule in words, for error messages and documentation.
TENANT_RULE = "1-63 of letters, digits, '_', '.' and '-', starting with a letter or digit"


def is_tenant_name(name: str) -> bool:
    """Whether ``name`` is a safe, short tenant name (no path separators, no leading dot)."""
    return _TENANT_RE.fullmatch(name) is not None
