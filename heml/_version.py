"""Package and wire-protocol versions."""

__version__ = "0.1.0"

# MAJOR changes break the wire format; clients refuse a server with another major version.
PROTOCOL_VERSION = "2.0"
