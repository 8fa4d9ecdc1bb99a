"""repotune: the shared kernel (config, store, registry, models, CLI root)."""

import sys as _sys

# sqlite-utils imports pandas when it is installed (datasets brings it) only to map
# `pd.Timestamp` values to TEXT; repotune never stores pandas values, and the import
# costs every command and the gateway's start half a second. Import sqlite-utils once
# with pandas hidden, then let anything that wants pandas import it as usual.
if "sqlite_utils" not in _sys.modules and "pandas" not in _sys.modules:
    _sys.modules["pandas"] = None  # type: ignore[assignment]
    try:
        import sqlite_utils  # noqa: F401
    finally:
        del _sys.modules["pandas"]
