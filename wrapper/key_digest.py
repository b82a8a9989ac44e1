"""Print the SHA-256 digest of an API key, for `key_sha256` in env.yaml or a keys file:

    python3 -m wrapper.key_digest < keyfile        (the same as: printf %s "$KEY" | sha256sum)

The key is read from stdin so it stays out of the shell history and the process list.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from common.settings import key_digest


def main(argv: Sequence[str], stdin: TextIO = sys.stdin) -> int:
    if argv:
        print("usage: python3 -m wrapper.key_digest < KEYFILE", file=sys.stderr)
        return 2
    key = stdin.read().strip()  # the wrapper strips the presented key too, so `echo KEY |` works
    if not key:
        print("error: no key on stdin", file=sys.stderr)
        return 2
    print(key_digest(key).hex())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
