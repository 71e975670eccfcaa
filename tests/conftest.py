"""Suite-wide pytest setup.

The guard against CPython gh-106905 (``stagetrace.astguard`` says why) is installed for
the whole session: pytest parses test sources with ``ast.parse`` while it formats a
failure, so a failing test whose server thread formats a traceback at the same moment
(an exception in a request handler) crashed the whole session with an INTERNALERROR
instead of reporting the failure.
"""

from __future__ import annotations

from stagetrace.astguard import ast_race_affected, serialize_ast_parse

__all__ = ["ast_race_affected", "serialize_ast_parse"]

serialize_ast_parse()
