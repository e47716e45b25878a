"""What every gpuscale server shares: bounded connections, TLS material and peer identities.

Imports none of the other parts, so the controller, the extender and the node agent can all use
it without depending on each other.
"""
