"""python3 openai_worker.py HOST PORT [--models a,b|public=upstream] [--svc-name NAME]
    [--capabilities chat,responses,speech,...]"""
import sys

from worker.cli import openai_worker

if __name__ == "__main__":
    sys.exit(openai_worker(sys.argv[1:]))
