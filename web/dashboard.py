"""``GET /``: the live dashboard page.

The page is static (it holds no data and needs no key); its script asks for
a read key, keeps it in ``sessionStorage`` (never in the URL or a cookie)
and talks to the API and ``WS /v1/stream`` with it. Everything it loads is
served from here (``web/static``): no CDN.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

# Templates and static files are the app's own (web/templates, web/static).
dashboard = Blueprint("dashboard", __name__)

#: The page runs only our own scripts and talks only to this origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dashboard.get("/")
def index() -> Response:
    response = Response(render_template("dashboard.html"))
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@dashboard.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it whatever the page links: the page's SVG icon."""
    return current_app.send_static_file("favicon.svg")
