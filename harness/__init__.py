"""The real stack, run for tests and benchmarks: a hub process (`hub`), the compose deployment
(`compose`) and what they leave behind (`processes`). Neither the hub image nor the gpuhub
package ships it (.dockerignore, pyproject's `packages`).
"""
