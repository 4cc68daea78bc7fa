from django.apps import AppConfig


class BadAppConfig(AppConfig):
    name = "tests.contrib.django.badapp"
    label = "csdjbad"
    default_auto_field = "django.db.models.BigAutoField"
