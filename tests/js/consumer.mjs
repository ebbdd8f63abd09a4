// Reads COUNT records of TOPIC as a member of GROUP (kafkajs' default round-robin assigner),
// commits the next offset of every partition it read, and prints what it got as JSON.
// Usage: node consumer.mjs BROKER TOPIC GROUP COUNT
import { Kafka, logLevel } from 'kafkajs';

const [broker, topic, groupId, countArg] = process.argv.slice(2);
if (!broker || !topic || !groupId || !countArg) {
  console.error('usage: node consumer.mjs BROKER TOPIC GROUP COUNT');
  process.exit(2);
}
const count = Number(countArg);
const kafka = new Kafka({
  clientId: 'keel-kafkajs-consumer',
  brokers: [broker],
  logLevel: logLevel.ERROR,
  retry: { retries: 5, initialRetryTime: 100 },
});
const consumer = kafka.consumer({
  groupId,
  sessionTimeout: 6000,
  heartbeatInterval: 1000,
  rebalanceTimeout: 10000,
  maxWaitTimeInMs: 100,
});
const records = [];
const deadline = setTimeout(() => {
  console.error(`timed out with ${records.length} of ${count} records`);
  process.exit(1);
}, 30000);

let joined = null;
consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
  joined = { groupProtocol: payload.groupProtocol, memberAssignment: payload.memberAssignment };
});
let finish;
const allRead = new Promise((resolve) => { finish = resolve; });

await consumer.connect();
await consumer.subscribe({ topics: [topic], fromBeginning: true });
await consumer.run({
  autoCommit: false,
  eachMessage: async ({ partition, message }) => {
    const headers = Object.fromEntries(
      Object.entries(message.headers || {}).map(([k, v]) => [k, v === undefined ? null : v.toString()]));
    records.push({
      partition,
      offset: Number(message.offset),
      key: message.key === null ? null : message.key.toString(),
      value: message.value.toString(),
      headers,
    });
    if (records.length >= count) finish();
  },
});
await allRead;

const next = new Map();
for (const r of records) next.set(r.partition, Math.max(next.get(r.partition) ?? 0, r.offset + 1));
await consumer.commitOffsets([...next].map(([partition, offset]) => ({ topic, partition, offset: String(offset) })));
const admin = kafka.admin();
await admin.connect();
const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
await admin.disconnect();
await consumer.disconnect();
clearTimeout(deadline);
console.log(JSON.stringify({ joined, records, committed }));
