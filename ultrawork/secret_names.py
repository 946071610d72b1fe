"""The one rule for which names look like they hold a secret (env variables, spec keys, headers).

Used where a value must be refused (a secret-looking env variable for a sandbox) or hidden
(a secret-looking key in a Plan.md header). Anything a name says in part is matched:
``GITHUB_TOKEN``, ``DB_PASSWORD``, ``AWS_SECRET_ACCESS_KEY``, ``x-api-key``, ``env.auth``.
"""

from __future__ import annotations

import re

SECRET_FRAGMENTS = ("secret", "token", "passw", "passphrase", "credential", "cookie", "signature", "private")
SECRET_WORDS = frozenset({"apikey", "pwd", "auth", "authorization", "session"})
LAST_WORDS = frozenset({"key", "keys"})      # API_KEY, x-api-key; not GIT_CONFIG_KEY_0 (git's own setting)
_WORD = re.compile(r"[^a-z0-9]+")


def looks_secret(name: str) -> bool:
    """True when ``name`` (or one of its ``_ . -`` separated words) names a secret."""
    lowered = str(name).lower()
    if any(fragment in lowered for fragment in SECRET_FRAGMENTS):
        return True
    words = [w for w in _WORD.split(lowered) if w]
    return bool(words) and (words[-1] in LAST_WORDS or any(word in SECRET_WORDS for word in words))
