"""The real stack, run for tests and benchmarks: a hub process (`hub`), the compose deployment
(`compose`), a simulated multi-node Docker Swarm (`swarm`) and what they leave behind
(`processes`). Neither the hub image nor the gpuhub package ships it (.dockerignore, pyproject's
`packages`).
"""
