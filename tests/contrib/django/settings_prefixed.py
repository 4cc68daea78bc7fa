"""The test settings with Django's DEFAULT key function, a KEY_PREFIX and a VERSION (Redis db 8).

``cache.set("tag:1", ...)`` is stored as ``shop:3:tag:1`` here; cachesync must
delete that key as well as the declared ``tag:1``.
"""

from tests.contrib.django.settings import *  # noqa: F403
from tests.contrib.django.settings import HOST, REDIS_PORT

PREFIXED_REDIS_URL = f"redis://{HOST}:{REDIS_PORT}/8"  # 5: the suite, 6: the example project
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": PREFIXED_REDIS_URL,
        "KEY_PREFIX": "shop",
        "VERSION": 3,
    }
}
CACHESYNC = {"CACHE_ALIAS": "default"}
