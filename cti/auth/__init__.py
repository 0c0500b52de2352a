"""Who is asking: per-person tokens, their roles, and what each role may see and do.

Pure parts (:mod:`cti.auth.tokens`) make and check tokens; :mod:`cti.auth.store` keeps their
hashes in Redis; :mod:`cti.auth.web` is the aiohttp edge; :mod:`cti.auth.mqtt_acl` writes what
mosquitto needs so the broker enforces the same rules.
"""

from cti.auth.tokens import ROLES, Principal, Role, TokenError, TokenRecord, hash_secret, new_token, verify_secret

__all__ = ["ROLES", "Principal", "Role", "TokenError", "TokenRecord", "hash_secret", "new_token", "verify_secret"]
