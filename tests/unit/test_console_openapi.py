"""The console's OpenAPI description matches the routes it serves (pure)."""

import re

from spawner.console import app, openapi


def test_every_documented_path_is_served_and_every_served_api_path_is_documented():
    doc = openapi.document("/services/gpuhub/")
    assert doc["servers"] == [{"url": "/services/gpuhub/api"}]
    served = app.make_app("/services/gpuhub/", "http://127.0.0.1:9/hub/api").wildcard_router.rules
    patterns = [r.matcher.regex.pattern for r in served]
    api_patterns = [p for p in patterns if "/api/" in p and not p.endswith(".*$") and "openapi" not in p]
    for path in doc["paths"]:
        concrete = "/services/gpuhub/api" + re.sub(r"\{[^}]+\}", "x", path)
        assert any(re.fullmatch(p.rstrip("$"), concrete) for p in api_patterns), path
    assert len(api_patterns) == len(doc["paths"])


def test_every_write_is_documented_as_needing_the_manage_scope():
    doc = openapi.document("/p/")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            needs = "custom:gpuhub:manage" if method in ("post", "put", "delete") else "custom:gpuhub:view"
            assert needs in op["description"], (method, path)
            assert "403" in op["responses"] and "400" in op["responses"]
