"""What every gpuscale server shares: bounded connections, TLS material, peer identities, and
Kubernetes access (one client, calls as JSON, list+watch).

Imports none of the other parts, so the controller, the extender and the node agent can all use
it without depending on each other.
"""
