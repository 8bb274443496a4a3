"""A tiny page layout for the example servers: French, readable, no JavaScript."""

from __future__ import annotations

from html import escape

from litestar import Response

STYLE = """
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;
line-height:1.5;color:#1b1b1b}
h1{font-size:1.6rem}label{display:block;margin-top:.8rem;font-weight:600}
input[type=text],input[type=password]{font-size:1rem;padding:.4rem;width:100%;max-width:22rem}
button,.button{font-size:1.05rem;padding:.6rem 1.1rem;margin-top:1rem;background:#000091;color:#fff;
border:0;border-radius:4px;text-decoration:none;display:inline-block;cursor:pointer}
.notice{padding:.8rem 1rem;border-left:4px solid #000091;background:#f0f0ff}
.alert{padding:.8rem 1rem;border-left:4px solid #ce0500;background:#ffe9e9}
table{border-collapse:collapse}td,th{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left}
footer{margin-top:3rem;font-size:.85rem;color:#555}
"""


# No script at all; forms post to the site itself (redirects then go to the broker).
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"


def page(title: str, body: str, *, site: str, status_code: int = 200) -> Response[str]:
    """``body`` is HTML already escaped by the caller (use ``escape`` on every value)."""
    html = (
        '<!doctype html><html lang="fr"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} — {escape(site)}</title><style>{STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main>"
        f"<footer>{escape(site)} — site de démonstration, données fictives.</footer></body></html>"
    )
    return Response(
        html,
        status_code=status_code,
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP},
    )


__all__ = ["escape", "page"]
