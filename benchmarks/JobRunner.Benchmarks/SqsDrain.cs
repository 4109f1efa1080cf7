using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Amazon.Runtime;
using JobRunner.Aws;
using JobRunner.Aws.Sqs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Benchmarks;

/// <summary>
/// SQS drain throughput against the emulator (fauxqs, JOBRUNNER_TEST_SQS), in the same run:
/// - raw: a hand-written loop over the same signed HTTP client: ReceiveMessage (10, long poll) then one
///   DeleteMessageBatch for what came back, by 4 consumers;
/// - JobRunner: SqsJobQueue.DequeueAsync into a buffer of 10, then one AcknowledgeAsync per job, all at once, as the
///   worker's slots do (the queue coalesces them into DeleteMessageBatch calls), by 4 consumers.
/// Both queues are filled before timing (raw: SendMessageBatch by hand; JobRunner: one EnqueueAsync per job, all at
/// once, coalesced into SendMessageBatch). Reported: drain time and throughput per round, the ratio JobRunner/raw, and
/// JobRunner's API calls per job over send + receive + delete.
/// First, submitting through the client (in-memory store, SQS queue, no worker): one <c>SubmitManyAsync</c> of all the
/// jobs against a loop of <c>SubmitAsync</c>, alternated, time and SQS calls per job.
/// </summary>
internal static class SqsDrain
{
    private const int Consumers = 4;

    public static async Task RunAsync(int jobs, int rounds)
    {
        var endpoint = Environment.GetEnvironmentVariable("JOBRUNNER_TEST_SQS")
            ?? throw new InvalidOperationException("JOBRUNNER_TEST_SQS is not set: run inside `pids=(); source eng/test-services/aws.sh` (it starts fauxqs).");
        Console.WriteLine($"SQS drain: {jobs} jobs per round, {rounds} rounds, {Consumers} consumers, fauxqs at {endpoint}");
        await SubmitAsync(endpoint, Math.Min(jobs, 1000), rounds);
        var rawTimes = new List<double>();
        var jrTimes = new List<double>();
        var callsPerJob = new List<double>();
        for (var round = 0; round <= rounds; round++)
        {
            var raw = await RawAsync(endpoint, jobs);
            var (jr, calls) = await JobRunnerAsync(endpoint, jobs);
            if (round == 0)
            {
                Console.WriteLine($"warm-up: raw {raw:F0} ms, JobRunner {jr:F0} ms");
                continue;
            }

            rawTimes.Add(raw);
            jrTimes.Add(jr);
            callsPerJob.Add(calls);
            Console.WriteLine($"round {round}: raw {raw:F0} ms ({jobs / raw * 1000:F0} jobs/s), JobRunner {jr:F0} ms ({jobs / jr * 1000:F0} jobs/s), ratio {jr / raw:F2}, API calls per job {calls:F3}");
        }

        var ratios = rawTimes.Zip(jrTimes, static (r, j) => j / r).ToList();
        var rawMedian = Median(rawTimes);
        var jrMedian = Median(jrTimes);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"median: raw {rawMedian:F0} ms ({jobs / rawMedian * 1000:F0} jobs/s), JobRunner {jrMedian:F0} ms ({jobs / jrMedian * 1000:F0} jobs/s), ratio of medians {jrMedian / rawMedian:F2}, median of round ratios {Median(ratios):F2}, API calls per job {Median(callsPerJob):F3}"));
    }

    private static SqsQueueOptions Options(string endpoint) => new()
    {
        Region = "us-east-1",
        ServiceUrl = new Uri(endpoint),
        Credentials = new BasicAWSCredentials("test", "test"),
        QueueName = "bench-" + Guid.NewGuid().ToString("N")[..10],
        CreateQueues = true,
        WaitTime = TimeSpan.FromSeconds(1),
    };

    private static async Task<double> RawAsync(string endpoint, int jobs)
    {
        var options = Options(endpoint);
        using var client = AwsSetup.CreateSqsClient(options, options.Credentials!, TimeProvider.System);
        using var created = await client.SendAsync("CreateQueue", options.QueueName, static (w, n) => w.WriteString("QueueName", n), CancellationToken.None);
        var url = created.RootElement.GetProperty("QueueUrl").GetString()!;
        var body = SqsMessage.Encode(Job());
        for (var sent = 0; sent < jobs; sent += 10)
        {
            var count = Math.Min(10, jobs - sent);
            using var _ = await client.SendAsync("SendMessageBatch", (url, body, count), static (w, s) =>
            {
                w.WriteString("QueueUrl", s.url);
                w.WriteStartArray("Entries");
                for (var i = 0; i < s.count; i++)
                {
                    w.WriteStartObject();
                    w.WriteString("Id", i.ToString(CultureInfo.InvariantCulture));
                    w.WriteString("MessageBody", s.body);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
            }, CancellationToken.None);
        }

        var remaining = jobs;
        using var done = new CancellationTokenSource();
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, Consumers).Select(_ => Task.Run(async () =>
        {
            while (Volatile.Read(ref remaining) > 0)
            {
                JsonDocument received;
                try
                {
                    received = await client.SendAsync("ReceiveMessage", url, static (w, u) =>
                    {
                        w.WriteString("QueueUrl", u);
                        w.WriteNumber("MaxNumberOfMessages", 10);
                        w.WriteNumber("VisibilityTimeout", 60);
                        w.WriteNumber("WaitTimeSeconds", 1);
                    }, done.Token);
                }
                catch (OperationCanceledException) when (done.IsCancellationRequested)
                {
                    // The last jobs were taken by another consumer while this long poll waited: the drain is over.
                    break;
                }

                using var _r = received;
                if (!received.RootElement.TryGetProperty("Messages", out var messages) || messages.GetArrayLength() == 0)
                {
                    continue;
                }

                var handles = messages.EnumerateArray().Select(m => m.GetProperty("ReceiptHandle").GetString()!).ToArray();
                using var _ = await client.SendAsync("DeleteMessageBatch", (url, handles), static (w, s) =>
                {
                    w.WriteString("QueueUrl", s.url);
                    w.WriteStartArray("Entries");
                    for (var i = 0; i < s.handles.Length; i++)
                    {
                        w.WriteStartObject();
                        w.WriteString("Id", i.ToString(CultureInfo.InvariantCulture));
                        w.WriteString("ReceiptHandle", s.handles[i]);
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                }, CancellationToken.None);
                if (Interlocked.Add(ref remaining, -handles.Length) <= 0)
                {
                    await done.CancelAsync();
                }
            }
        }))).WaitAsync(TimeSpan.FromMinutes(5));
        return clock.Elapsed.TotalMilliseconds;
    }

    private static async Task<(double Ms, double CallsPerJob)> JobRunnerAsync(string endpoint, int jobs)
    {
        await using var queue = AwsSetup.CreateQueue(Options(endpoint), TimeProvider.System);
        await queue.StartAsync(CancellationToken.None);
        var before = queue.ApiCalls;
        await Task.WhenAll(Enumerable.Range(0, jobs).Select(_ => queue.EnqueueAsync(Job(), CancellationToken.None).AsTask()));

        var remaining = jobs;
        using var done = new CancellationTokenSource();
        var clock = Stopwatch.StartNew();
        var consumers = Enumerable.Range(0, Consumers).Select(_ => Task.Run(async () =>
        {
            var buffer = new QueuedJob[10];
            try
            {
                while (Volatile.Read(ref remaining) > 0)
                {
                    var got = await queue.DequeueAsync(buffer, TimeSpan.FromSeconds(60), done.Token);
                    var acks = new Task[got];
                    for (var i = 0; i < got; i++)
                    {
                        acks[i] = queue.AcknowledgeAsync([buffer[i]], CancellationToken.None).AsTask();
                    }

                    await Task.WhenAll(acks);
                    if (Interlocked.Add(ref remaining, -got) <= 0)
                    {
                        await done.CancelAsync();
                    }
                }
            }
            catch (OperationCanceledException) when (done.IsCancellationRequested)
            {
            }
        })).ToArray();
        await Task.WhenAll(consumers).WaitAsync(TimeSpan.FromMinutes(5));
        var ms = clock.Elapsed.TotalMilliseconds;

        // Long polls still open when the last job was taken (cancelled, empty) count too: they are part of the price.
        return (ms, (queue.ApiCalls - before) / (double)jobs);
    }

    private static async Task SubmitAsync(string endpoint, int jobs, int rounds)
    {
        var services = new ServiceCollection();
        services.AddJobRunner(runner => runner
            .ConfigureWorker(w => w.Enabled = false)
            .AddWorkload<EndToEndBenchmarks.NoOpWorkload>("noop")
            .UseSqsQueue(o =>
            {
                var options = Options(endpoint);
                (o.Region, o.ServiceUrl, o.Credentials, o.QueueName, o.CreateQueues, o.WaitTime) = (options.Region, options.ServiceUrl, options.Credentials, options.QueueName, options.CreateQueues, options.WaitTime);
            }));
        await using var provider = services.BuildServiceProvider();
        foreach (var hosted in provider.GetServices<IHostedService>())
        {
            await hosted.StartAsync(CancellationToken.None);
        }

        var client = provider.GetRequiredService<IJobClient>();
        var queue = provider.GetRequiredService<SqsJobQueue>();
        var requests = Enumerable.Range(0, jobs).Select(_ => new JobRequest("noop")).ToList();
        for (var round = 0; round <= rounds; round++)
        {
            var calls = queue.ApiCalls;
            var clock = Stopwatch.StartNew();
            await client.SubmitManyAsync(requests);
            var many = clock.Elapsed.TotalMilliseconds;
            var manyCalls = (queue.ApiCalls - calls) / (double)jobs;

            calls = queue.ApiCalls;
            clock.Restart();
            foreach (var request in requests)
            {
                await client.SubmitAsync(request);
            }

            var single = clock.Elapsed.TotalMilliseconds;
            var singleCalls = (queue.ApiCalls - calls) / (double)jobs;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"submit {jobs} {(round == 0 ? "(warm-up)" : $"round {round}")}: SubmitManyAsync {many:F0} ms ({jobs / many * 1000:F0} jobs/s, {manyCalls:F3} SQS calls/job), SubmitAsync loop {single:F0} ms ({jobs / single * 1000:F0} jobs/s, {singleCalls:F3} calls/job), ratio {single / many:F1}"));
        }

        foreach (var hosted in provider.GetServices<IHostedService>().Reverse())
        {
            await hosted.StopAsync(CancellationToken.None);
        }
    }

    private static QueuedJob Job() => new()
    {
        Id = JobId.New(TimeProvider.System),
        Priority = 5,
        Tenant = "acme",
        Workload = "bench",
        EnqueuedAt = TimeProvider.System.GetUtcNow(),
    };

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? double.NaN : sorted[sorted.Count / 2];
    }
}
