using System.Text.Json;
using Amazon.Runtime;
using JobRunner.Aws.S3;
using JobRunner.Aws.Sqs;

namespace JobRunner.Aws.Tests.Support;

/// <summary>
/// The emulators started by eng/test-services/aws.sh (through ./test.sh): fauxqs (SQS and S3) and local-aws-sqs. A test
/// that needs one fails with a message saying how to start them when its variable is missing.
/// </summary>
internal static class AwsTestEnvironment
{
    public const string Fauxqs = "fauxqs";
    public const string LocalAwsSqs = "local-aws-sqs";

    public static TheoryData<string> SqsEmulators => new() { Fauxqs, LocalAwsSqs };

    public static BasicAWSCredentials Credentials { get; } = new("test", "test");

    public static Uri SqsEndpoint(string emulator) => Require(emulator == LocalAwsSqs ? "JOBRUNNER_TEST_SQS_SECONDARY" : "JOBRUNNER_TEST_SQS");

    public static Uri S3Endpoint => Require("JOBRUNNER_TEST_S3");

    public static string Unique(string prefix) => prefix + "-" + Guid.NewGuid().ToString("N")[..12];

    public static SqsQueueOptions QueueOptions(string emulator, string? name = null) => new()
    {
        Region = "us-east-1",
        ServiceUrl = SqsEndpoint(emulator),
        Credentials = Credentials,
        QueueName = name ?? Unique("jobs"),
        CreateQueues = true,
        WaitTime = TimeSpan.FromSeconds(2),
    };

    public static S3StoreOptions S3Options(string? bucket = null) => new()
    {
        Bucket = bucket ?? Unique("bucket"),
        Region = "us-east-1",
        ServiceUrl = S3Endpoint,
        ForcePathStyle = true,
        Credentials = Credentials,
        CreateBucket = true,
    };

    public static async Task<S3Bucket> CreateBucketAsync(string prefix = "")
    {
        var options = S3Options();
        options.Prefix = prefix;
        var bucket = AwsSetup.CreateBucket(options);
        await bucket.EnsureExistsAsync(create: true, CancellationToken.None);
        return bucket;
    }

    /// <summary>A plain SQS client on the same endpoint, to look at queues from outside the queue under test.</summary>
    public static SqsClient RawClient(string emulator) => AwsSetup.CreateSqsClient(QueueOptions(emulator), Credentials, TimeProvider.System);

    public static async Task<Dictionary<string, long>> CountsAsync(SqsClient client, string queueUrl)
    {
        using var response = await client.SendAsync("GetQueueAttributes", queueUrl, static (w, u) =>
        {
            w.WriteString("QueueUrl", u);
            w.WriteStartArray("AttributeNames");
            w.WriteStringValue("All");
            w.WriteEndArray();
        }, CancellationToken.None);
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var p in response.RootElement.GetProperty("Attributes").EnumerateObject())
        {
            if (p.Name.StartsWith("ApproximateNumberOfMessages", StringComparison.Ordinal) && long.TryParse(p.Value.GetString(), out var n))
            {
                counts[p.Name] = n;
            }
        }

        return counts;
    }

    public static async Task SendRawAsync(SqsClient client, string queueUrl, string body)
    {
        using var _ = await client.SendAsync("SendMessage", (queueUrl, body), static (w, s) =>
        {
            w.WriteString("QueueUrl", s.queueUrl);
            w.WriteString("MessageBody", s.body);
        }, CancellationToken.None);
    }

    public static async Task<List<JsonElement>> ReceiveRawAsync(SqsClient client, string queueUrl, int waitSeconds = 5)
    {
        using var response = await client.SendAsync("ReceiveMessage", (queueUrl, waitSeconds), static (w, s) =>
        {
            w.WriteString("QueueUrl", s.queueUrl);
            w.WriteNumber("MaxNumberOfMessages", 10);
            w.WriteNumber("WaitTimeSeconds", s.waitSeconds);
            w.WriteStartArray("MessageSystemAttributeNames");
            w.WriteStringValue("All");
            w.WriteEndArray();
            w.WriteStartArray("MessageAttributeNames");
            w.WriteStringValue("All");
            w.WriteEndArray();
        }, CancellationToken.None);
        return response.RootElement.TryGetProperty("Messages", out var m) ? m.EnumerateArray().Select(e => e.Clone()).ToList() : [];
    }

    public static QueuedJob Job(int priority = 5, string tenant = "acme", DateTimeOffset? due = null, TimeProvider? time = null) => new()
    {
        Id = JobId.New(time ?? TimeProvider.System),
        Priority = priority,
        Tenant = tenant,
        Workload = "resize-images",
        ConcurrencyKey = "k1",
        EnqueuedAt = (time ?? TimeProvider.System).GetUtcNow(),
        DueAt = due,
    };

    /// <summary>A hang guard: generous, only so that a broken test ends.</summary>
    public static CancellationToken Guard(int seconds = 30) => new CancellationTokenSource(TimeSpan.FromSeconds(seconds)).Token;

    private static Uri Require(string name)
    {
        var value = Environment.GetEnvironmentVariable(name);
        if (string.IsNullOrWhiteSpace(value))
        {
            throw new InvalidOperationException($"{name} is not set. The AWS integration tests need the emulators: run ./test.sh, or `pids=(); source eng/test-services/aws.sh` in bash and run the tests from that shell.");
        }

        return new Uri(value);
    }
}
