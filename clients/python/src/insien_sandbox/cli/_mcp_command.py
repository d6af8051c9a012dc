"""`insien mcp`: the MCP server on stdio, or on streamable HTTP with `--http`."""

from __future__ import annotations

import click


@click.command()
@click.option("--url", envvar="INSIEN_URL", help="The Insien server (default $INSIEN_URL).")
@click.option("--api-key", envvar="INSIEN_API_KEY", help="Your key (default $INSIEN_API_KEY).")
@click.option("--http", "over_http", is_flag=True, help="Serve streamable HTTP, not stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --http: address.")
@click.option("--port", default=8765, show_default=True, help="With --http: port.")
def mcp(url: str | None, api_key: str | None, over_http: bool, host: str, port: int) -> None:
    """An MCP server whose tools make and use sandboxes (for AI agents and their hosts)."""
    try:
        from ._mcp_server import build_server
    except ImportError as exc:  # the `mcp` extra is missing
        raise click.ClickException(f"insien mcp needs the mcp package ({exc.name})") from exc
    server = build_server(api_key, url)
    if over_http:
        server.run("streamable-http", host=host, port=port)
    else:
        server.run("stdio")
