"""Keep credentials out of everything slimflow writes or says: params, tags, summaries, logs, error
messages, command lines. URIs keep their scheme, user, host and path; the password and secret-like
query parameters become ``***``."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@\s:]*)(?P<pw>:[^/@\s]*)?@")
_QUERY = re.compile(
    r"(?P<key>[?&;](?:[^=&;\s]*(?:password|passwd|token|secret|api_key|apikey|auth)[^=&;\s]*))=[^&;\s]*", re.I
)
# a key whose last part names a secret: hub_token, password, api_key, auth_string (not max_tokens)
SECRETISH = re.compile(
    r"(?:^|[._\-])(?:[a-z0-9]*_)?(?:token|secret|password|passwd|api_?key|auth(?:_string)?|credentials?)$",
    re.I,
)


def redact(text: str) -> str:
    """``text`` with the passwords of URIs in it and secret-like query values replaced by ``***``
    (a user name alone is hidden too: tokens are often passed as ``https://TOKEN@host``)."""
    if not text or ("@" not in text and "=" not in text):
        return text

    def userinfo(m: re.Match[str]) -> str:
        keep = f"{m['user']}:" if m["pw"] and m["user"] else ""
        return f"{m['scheme']}{keep}***@"

    return _QUERY.sub(lambda m: f"{m['key']}=***", _USERINFO.sub(userinfo, text))


def redact_override(item: str) -> str:
    """A ``--set KEY=VALUE`` as it may be shown: the value of a secret-like key hidden, URIs redacted."""
    key, sep, value = item.partition("=")
    if sep and SECRETISH.search(key):
        return f"{key}=***"
    return redact(item)
