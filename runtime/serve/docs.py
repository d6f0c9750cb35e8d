"""maskclip-serve's /docs: the API reference as one self-contained HTML page, made from the OpenAPI schema.

FastAPI's own docs page loads Swagger UI from a CDN, so on a machine without internet access it is
blank; this page needs nothing but itself. Every value from the schema is escaped.
"""

from __future__ import annotations

from html import escape

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .3rem; font-family: ui-monospace, monospace; }
.method { display: inline-block; min-width: 3.5rem; color: #fff; background: #1565c0; border-radius: 4px;
  padding: 0 .4rem; margin-right: .4rem; text-align: center; }
.method.post { background: #2e7d32; }
table { border-collapse: collapse; margin: .3rem 0; }
td, th { border-bottom: 1px solid #ddd; padding: .2rem .6rem; text-align: left; }
pre { white-space: pre-wrap; color: #444; margin: .3rem 0; }
"""


def api_docs_html(schema: dict) -> str:
    """The endpoints of an OpenAPI schema: method, path, summary, description and query parameters."""
    sections = []
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            sections.append(_operation(path, method, operation, schema.get("components", {}).get("schemas", {})))
    title = escape(str(schema.get("info", {}).get("title", "API")))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title} API</h1>"
        f'<p>The schema as JSON: <a href="openapi.json">openapi.json</a>.</p>{"".join(sections)}</body></html>\n'
    )


def _operation(path: str, method: str, operation: dict, components: dict) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(str(p.get('name')))}</code></td>"
        f"<td>{escape(_type(p.get('schema', {}), components))}</td>"
        f"<td>{'required' if p.get('required') else 'optional'}</td></tr>"
        for p in operation.get("parameters", [])
    )
    parameters = f"<table><tr><th>query parameter</th><th>values</th><th></th></tr>{rows}</table>" if rows else ""
    description = operation.get("description", "")
    return (
        f'<h2><span class="method {escape(method)}">{escape(method.upper())}</span>{escape(path)}</h2>'
        f"<div>{escape(str(operation.get('summary', '')))}</div>"
        f"{f'<pre>{escape(str(description))}</pre>' if description else ''}{parameters}"
    )


def _type(schema: dict, components: dict) -> str:
    """A parameter's values in a few words: its enum, or its type, through anyOf (Optional) and $ref."""
    options = schema.get("anyOf", [schema])
    words = []
    for option in options:
        if "$ref" in option:
            option = components.get(option["$ref"].rsplit("/", 1)[-1], option)
        if "enum" in option:
            words.append(" | ".join(map(str, option["enum"])))
        elif "$ref" in option:
            words.append(option["$ref"].rsplit("/", 1)[-1])
        elif option.get("type") not in (None, "null"):
            words.append(str(option["type"]))
    return " | ".join(words) or "any"
