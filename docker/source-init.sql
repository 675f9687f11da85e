-- Provisions the source database on the first start of the `source` container (an empty data
-- volume); the postgres image runs it as the superuser `postgres`, connected to `postgres`.
-- Mirrors provision_source() in scripts/stack.sh: keep the two in step.

-- the application that owns the data, and the tunnel's read-only login
CREATE ROLE app LOGIN CREATEDB PASSWORD 'app';
CREATE ROLE tunnel_reader LOGIN PASSWORD 'reader' NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER ROLE tunnel_reader SET default_transaction_read_only = on;
GRANT pg_read_all_stats TO tunnel_reader;
CREATE DATABASE source OWNER app;

-- every database the application creates from template1 (the demo's, each test's) and `source`
-- itself: pg_stat_statements, and SELECT for the reader on app's tables, present and future
\connect template1
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO tunnel_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tunnel_reader;

\connect source
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO tunnel_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tunnel_reader;
