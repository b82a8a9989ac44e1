"""python3 main_openai_wrapper_v2.py HOST PORT [--config env.yaml]"""
import sys

from gateway.cli import wrapper

if __name__ == "__main__":
    sys.exit(wrapper(sys.argv[1:]))
