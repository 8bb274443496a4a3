"""A minimal Django project serving django-oauth-toolkit's stock token endpoint.

The database comes from ``BENCH_DATABASE``: a JSON object in the shape of one entry of
``DATABASES`` (written by bench/tokens.py). Connections persist across requests, one per
gunicorn thread.
"""

import json
import os

DEBUG = False
SECRET_KEY = os.environ.get("BENCH_SECRET_KEY", "bench-only-django-secret-key-not-for-production")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "oauth2_provider",
    "benchsite",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "benchsite.urls"
WSGI_APPLICATION = "benchsite.wsgi.application"

DATABASES = {"default": json.loads(os.environ.get("BENCH_DATABASE", "{}"))}
DATABASES["default"].setdefault("ENGINE", "django.db.backends.sqlite3")
DATABASES["default"].setdefault("NAME", "bench.sqlite3")
DATABASES["default"]["CONN_MAX_AGE"] = None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Like the broker on SQLite: WAL, synchronous=NORMAL, writers wait for the lock. An
    # IMMEDIATE transaction takes the write lock up front, so two rotations never deadlock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False

OAUTH2_PROVIDER = {
    "SCOPES": {"read": "Read", "write": "Write"},
    "ROTATE_REFRESH_TOKEN": True,  # the default, stated
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    # A refresh token used twice revokes every token of its family, as the broker does.
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
}

# Errors only: no per-request log lines.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler", "level": "ERROR"}},
    "root": {"handlers": ["console"], "level": "ERROR"},
}
