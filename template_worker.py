"""python3 template_worker.py HOST PORT generators.echo.EchoGen [--models m1,m2] [--svc-name NAME]"""
import sys

from worker.cli import template_worker

if __name__ == "__main__":
    sys.exit(template_worker(sys.argv[1:]))
