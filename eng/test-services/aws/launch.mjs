// Starts the SQS/S3 emulators for JobRunner.Aws integration tests on 127.0.0.1 only, on free ports, and prints one line
// "fauxqs=<port> local-aws-sqs=<port>" when both listen. fauxqs's own CLI binds every interface, so it is started through
// buildApp() here. Stops on SIGTERM/SIGINT.
import { buildApp } from "fauxqs";
import localSqs from "local-aws-sqs";

const fauxqs = buildApp({ logger: false, host: "127.0.0.1" });
await fauxqs.listen({ port: 0, host: "127.0.0.1" });
const fauxqsPort = fauxqs.server.address().port;

const sqs = await localSqs.createSqsServer({
  port: 0,
  hostname: "127.0.0.1",
  region: "us-east-1",
  emulateQueueCreationLifecycle: false,
});
const sqsPort = sqs.address().port;

console.log(`fauxqs=${fauxqsPort} local-aws-sqs=${sqsPort}`);

const stop = async () => {
  // Open keep-alive connections would hold close() up: exit within 2 seconds whatever happens.
  setTimeout(() => process.exit(0), 2000).unref();
  sqs.closeAllConnections?.();
  sqs.close();
  fauxqs.server.closeAllConnections?.();
  await fauxqs.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
