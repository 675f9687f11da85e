"""Reads a whole topic with Confluent's Python client and its AvroDeserializer, as any
Confluent-compatible reader would, and prints what it found as JSON.

usage: decode.py BROKERS REGISTRY_URL TOPIC
"""
import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

brokers, registry_url, topic = sys.argv[1:4]
registry = SchemaRegistryClient({"url": registry_url})
deserialize = AvroDeserializer(registry)
consumer = Consumer({
    "bootstrap.servers": brokers,
    "group.id": "thirdparty-decode",
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
})
partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
found = {"records": 0, "tombstones": 0, "failures": 0, "errors": [], "ops": {}}
deadline = time.time() + 120
while time.time() < deadline:
    positions = consumer.position([TopicPartition(topic, p) for p in partitions])
    if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions):
        break
    m = consumer.poll(1.0)
    if m is None or m.error():
        continue
    found["records"] += 1
    try:
        deserialize(m.key(), SerializationContext(topic, MessageField.KEY))
        if m.value() is None:
            found["tombstones"] += 1
            continue
        value = deserialize(m.value(), SerializationContext(topic, MessageField.VALUE))
        op = value["op"]
        found["ops"][op] = found["ops"].get(op, 0) + 1
    except Exception as e:  # every failure is counted and a few are shown
        found["failures"] += 1
        if len(found["errors"]) < 5:
            found["errors"].append(f"partition {m.partition()} offset {m.offset()}: {e}")
else:
    found["errors"].append("timed out before the end of the topic")
consumer.close()
print(json.dumps(found))
