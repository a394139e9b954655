"""The webserver's GraphQL API, as the topology (``mesh up``, ``mesh status``) and its tests use
it: the code locations and their load errors, the daemon's heartbeats, a location's reload."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from mesh_platform.errors import MeshError

HOST = "127.0.0.1"  # every process of the topology listens on loopback

_ERROR = "... on PythonError { message errorChain { error { message } } }"
LOCATIONS = f"""{{ workspaceOrError {{ __typename ... on Workspace {{ locationEntries {{
  name loadStatus locationOrLoadError {{ __typename {_ERROR} }} }} }} }} }}"""
DAEMONS = """{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"""
RELOAD = f"""mutation($name: String!) {{ reloadRepositoryLocation(repositoryLocationName: $name) {{
  __typename ... on WorkspaceLocationEntry {{ name loadStatus locationOrLoadError {{
  __typename {_ERROR} }} }} {_ERROR} }} }}"""


def graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict:
    """The ``data`` of ``query`` sent to the webserver's GraphQL API on ``port``."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    if body.get("errors"):
        raise MeshError(f"the Dagster GraphQL API refused the query: {body['errors'][0]}")
    return body["data"]


def error_text(error: dict) -> str:
    """A GraphQL PythonError as people read it: its message, then each error that caused it
    (a location's load error says where it loaded; its cause says what broke)."""
    chain = [link["error"]["message"] for link in error.get("errorChain") or []]
    return "\n".join(m.strip() for m in [error.get("message") or "", *chain] if m.strip())
