"""The test settings with bad declarations (app ``badapp``) and an invalid CACHESYNC value."""

from tests.contrib.django.settings import *  # noqa: F403

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "cachesync.contrib.django",
    "tests.contrib.django.badapp",
]
CACHESYNC = {"CACHE_ALIAS": "default", "FAST_PATH": "sometimes"}
