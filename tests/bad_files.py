"""Image files that a server must refuse: decompression bombs, truncated files."""


def png(width, height, complete):
    """A grayscale PNG of width x height zeros: with ``complete``, a real decompression bomb
    (~100 KB that decode to width x height bytes, x3 as RGB); else its header and a stub."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row = zlib.compressobj(9), b"\x00" * (width + 1)  # filter byte + one byte per pixel
    rows = b"".join(compressor.compress(row) for _ in range(height)) if complete else compressor.compress(row)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows + compressor.flush()) + chunk(b"IEND", b"")
    )


def jpeg(image):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG")
    return buffer.getvalue()
