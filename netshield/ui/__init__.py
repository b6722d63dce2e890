"""The live view (`netshield ui`): the mesh as a picture, drawn from connection records.

`graph` turns records, CAS revocations and the policy into nodes and edges (pure); `page`
renders the self-contained HTML page (pure); `server` follows the record files with
`netshield.logs`' reader and follower, and serves the page, the graph as JSON and live updates.
"""
