"""`insien mcp`: the MCP server on stdio, or on streamable HTTP with `--http`."""

from __future__ import annotations

import secrets

import click

MIN_TOKEN = 16
"""Characters a chosen `--token` needs at least: it guards the operator's key."""


@click.command()
@click.option("--url", envvar="INSIEN_URL", help="The Insien server (default $INSIEN_URL).")
@click.option("--api-key", envvar="INSIEN_API_KEY", help="Your key (default $INSIEN_API_KEY).")
@click.option("--http", "over_http", is_flag=True, help="Serve streamable HTTP, not stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --http: address.")
@click.option("--port", default=8765, show_default=True, help="With --http: port.")
@click.option(
    "--token",
    envvar="INSIEN_MCP_TOKEN",
    help="With --http: the bearer token clients must send (default $INSIEN_MCP_TOKEN, which "
    "other local users cannot read from the command line; without either, a new one is made "
    "and printed on stderr).",
)
def mcp(
    url: str | None,
    api_key: str | None,
    over_http: bool,
    host: str,
    port: int,
    token: str | None,
) -> None:
    """An MCP server whose tools make and use sandboxes (for AI agents and their hosts)."""
    try:
        from ._mcp_server import build_server, is_loopback, serve_http
    except ImportError as exc:  # the `mcp` extra is missing
        raise click.ClickException(f"insien mcp needs the mcp package ({exc.name})") from exc
    if not over_http:
        build_server(api_key, url).run("stdio")
        return
    # Its tools act with this key, so over HTTP only a client holding the token may call them.
    if token is None:
        token = secrets.token_urlsafe(32)
        click.echo(
            f"insien mcp: clients must send the header 'Authorization: Bearer {token}' "
            "(set INSIEN_MCP_TOKEN to choose it)",
            err=True,
        )
    elif len(token) < MIN_TOKEN:
        raise click.ClickException(f"the MCP token must have at least {MIN_TOKEN} characters")
    if not is_loopback(host):
        click.echo(
            f"insien mcp: warning: listening on {host} lets other machines reach the MCP server "
            "(plain HTTP: the token and your sandboxes' data cross the network unencrypted)",
            err=True,
        )
    import anyio

    anyio.run(serve_http, build_server(api_key, url), host, port, token)
