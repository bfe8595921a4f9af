"""Response compression: content codings negotiated per client (rules), coded as the body
streams (codecs), applied between the cache and the relay (stage)."""

from gateway.compression.stage import CONTENT_ENCODING, IF_NONE_MATCH, IF_RANGE, Compressor

__all__ = ["CONTENT_ENCODING", "IF_NONE_MATCH", "IF_RANGE", "Compressor"]
