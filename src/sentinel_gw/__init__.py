"""sentinel-gw: an MCP security gateway."""

__version__ = "0.1.0"
