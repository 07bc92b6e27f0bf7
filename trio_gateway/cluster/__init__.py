"""Cluster mode (SPEC 12): several gateways share one PostgreSQL database.

    db.py        the connection pool and THE way to call the database from trio: a thread
                 (inline on a MockClock), a deadline, cancellation that cancels the query
    schema.py    the tables, created and migrated at start (a schema_version table)
    pg_queue.py  the delivery queue: claims with a lease and a fencing counter
    pg_delivery.py  the delivery worker that claims due entries in batches
    pg_sessions.py  sessions owned through a lease; orphans adopted; cron's slot compare-and-set
    node.py      this node's heartbeat, the takeover sweep, leaving, `cluster status`
    leases.py    a generic per-key lease with an epoch (inbound listeners, session owners)
    inbound.py   listeners under the lease `inbound:<channel>:<account>`; their cursors
    (the parts `app/assemble.py` takes when `cluster.backend` is "postgres" are `app/cluster.py`)

Imported only when `cluster.backend` is "postgres": a gateway on files never loads psycopg.
"""
