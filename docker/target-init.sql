-- Provisions the target database on the first start of the `target` container (an empty data
-- volume); the postgres image runs it as the superuser `postgres`, connected to `postgres`.
-- Mirrors provision_target() in scripts/stack.sh: keep the two in step.
CREATE ROLE tunnel_writer LOGIN CREATEDB PASSWORD 'writer';
CREATE DATABASE target OWNER tunnel_writer;
