from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.contrib.django.testapp"
    label = "csdj"
    default_auto_field = "django.db.models.BigAutoField"
