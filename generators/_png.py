"""A minimal PNG encoder (zlib + struct, no imaging library): solid or patterned RGB images for EchoGen."""
from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

PixelFn = Callable[[int, int], tuple[int, int, int]]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, pixel: PixelFn) -> bytes:
    """An 8-bit RGB PNG; `pixel(x, y)` gives each pixel's (r, g, b)."""
    rows = b"".join(b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")

