"""``mesh serve``: the mesh's front door, an authenticated query service.

Analysts, BI tools and notebooks connect with the PostgreSQL protocol (psql, psycopg, ADBC,
SQLAlchemy) and a credential (an issued token or an OpenID Connect JWT); each query runs on the
federated query engine under the authenticated principal's grants and masks, exactly as
``mesh query`` runs it. Modules, in the order a connection meets them:

- :mod:`.server`: listening, TLS, login rate limits, health endpoints, shutdown;
- :mod:`.identity`, :mod:`.tokens`, :mod:`.oidc`: who a login is;
- :mod:`.wire`: the protocol of one connection;
- :mod:`.dialect`, :mod:`.commands`, :mod:`.catalog`: what a statement is and where it runs;
- :mod:`.engines`: warm engines shared by clients, results streamed in batches;
- :mod:`.results`, :mod:`.errors`: rows and errors as PostgreSQL sends them.
"""
