"""WSGI entry point of the example blog."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "blogsite.settings")
application = get_wsgi_application()
