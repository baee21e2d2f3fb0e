"""What the tests share, one module per concept (tests import from here, never from each other):

- env: paths, free ports, installer environments, pip/uv runs;
- sdists: small projects and real sdists (made, cached from upstream, or written member by member);
- backends: projects for each PEP 517 build backend;
- wheels: wheels made by hand;
- farms: the farm run in process (publishing from database rows) and as `farm up`;
- servers: real servers on 127.0.0.1 (pypiserver, devpi, Redis, PostgreSQL, a process cluster).
"""
