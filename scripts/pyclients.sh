#!/usr/bin/env bash
# Installs (once) a Python environment with third-party Kafka clients, for the tests that read
# our topics as other tools would (consumer/tests/thirdparty.rs), and prints its python's path.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=2.16.2
VENV=$ROOT/.stack/pyclients-$VERSION
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import confluent_kafka.schema_registry.avro' 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "confluent-kafka[avro,schemaregistry]==$VERSION" >&2
fi
echo "$VENV/bin/python"
