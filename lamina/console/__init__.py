"""The web console that ``lamina serve`` serves beside gRPC (``--http-port``, default 6335):
collections, points, a search playground with explain, tenants, snapshots and live
metrics, in the browser. See docs/console.md for its pages and its JSON API.
"""

from lamina.console.app import DEFAULT_HTTP_PORT, Console

__all__ = ["DEFAULT_HTTP_PORT", "Console"]
