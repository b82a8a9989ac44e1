"""python3 main_openai_wrapper_v2.py HOST PORT [--config env.yaml] [--processes N]"""
import sys

from wrapper.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
