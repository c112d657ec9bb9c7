#!/usr/bin/env python
"""The example project's manage.py: `DATABASE_URL=postgresql://... python manage.py shoal_migrate`."""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # mysite and shop, also under PYTHONSAFEPATH
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
