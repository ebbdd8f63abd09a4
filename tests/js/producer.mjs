// Produces COUNT keyed records with headers, gzip-compressed, acks=-1, and prints the
// broker's acknowledgements as JSON. Usage: node producer.mjs BROKER TOPIC [COUNT]
import { CompressionTypes, Kafka, logLevel } from 'kafkajs';

const [broker, topic, countArg = '20'] = process.argv.slice(2);
if (!broker || !topic) {
  console.error('usage: node producer.mjs BROKER TOPIC [COUNT]');
  process.exit(2);
}
const count = Number(countArg);
const kafka = new Kafka({
  clientId: 'keel-kafkajs-producer',
  brokers: [broker],
  logLevel: logLevel.ERROR,
  retry: { retries: 5, initialRetryTime: 100 },
});
const producer = kafka.producer({ allowAutoTopicCreation: false });
await producer.connect();
const messages = Array.from({ length: count }, (_, i) => ({
  key: `key-${i % 5}`,
  value: `kafkajs-value-${i}`,
  headers: { index: String(i), source: 'kafkajs' },
}));
const acks = await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages });
await producer.disconnect();
console.log(JSON.stringify({ sent: messages.map((m) => ({ key: m.key, value: m.value, headers: m.headers })), acks }));
