-- The TLS-only role tunnel_tls, on source and target, for docker-compose.secure.yml's
-- `tls-role` service (psql -v pw=<.stack/tls/pg-password>); idempotent. Mirrors
-- secure_postgres() in scripts/stack.sh; pg_hba.secure.conf lets the role in over TLS only.
SELECT format('CREATE ROLE tunnel_tls LOGIN PASSWORD %L', :'pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tunnel_tls') \gexec
ALTER ROLE tunnel_tls LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD :'pw';
