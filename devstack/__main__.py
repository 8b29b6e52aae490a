"""Local stack without Docker: `python -m devstack up | status | down | restart-taskmanager | env | logs`.

Fetches everything from package registries (Debian, Maven Central, PyPI, the Go module proxy), caches it
under $DEVSTACK_HOME (default /var/tmp/iheardai-devstack), and runs real processes: Postgres, Redis, an
S3-compatible server, a KRaft Kafka broker, a Flink standalone cluster, the Beam Python worker pool, the
Beam Kafka expansion service and the Beam Flink job server. Logs: $DEVSTACK_HOME/logs/<service>.log.
"""

import sys

from devstack.stack import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
