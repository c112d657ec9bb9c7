"""A minimal Django project enqueueing Shoal jobs (examples/README.md). The database comes from
DATABASE_URL (the same URL `shoal worker` takes), and Shoal's jobs live in that same database, so a
view's job commits or rolls back with the view's rows."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/shop"))

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3
        "NAME": _db.get("dbname", "shop"),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
        "ATOMIC_REQUESTS": True,  # each view in one transaction: its jobs commit with its rows
    }
}
SHOAL = {"DATABASE": "default"}  # where Shoal's schema is (manage.py shoal_migrate) and jobs go

INSTALLED_APPS = ["shoal.contrib.django", "shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "mysite.urls"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
