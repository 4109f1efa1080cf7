using System.Net;
using System.Text;
using Amazon.Runtime;
using JobRunner.Aws.Sqs;
using Microsoft.Extensions.Options;

namespace JobRunner.Aws.Tests.Sqs;

/// <summary>The SQS client, message format, batching and options, without a server.</summary>
public sealed class SqsUnitTests
{
    [Fact]
    public void Message_RoundTrips()
    {
        var job = new QueuedJob
        {
            Id = JobId.New(TimeProvider.System),
            Priority = 9,
            Tenant = "acme",
            Workload = "resize",
            ConcurrencyKey = "k",
            Affinity = "gpu=true, zone=eu?, !spot",
            EnqueuedAt = DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_123),
            DueAt = DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_900_000),
        };

        Assert.True(SqsMessage.TryDecode(SqsMessage.Encode(job), out var read, out var pointer, out var problem));
        Assert.Equal(job, read);
        Assert.Null(pointer);
        Assert.Null(problem);
    }

    [Theory]
    [InlineData("")]
    [InlineData("not json")]
    [InlineData("[]")]
    [InlineData("{\"v\":2}")]
    [InlineData("{\"v\":1,\"id\":\"nope\",\"p\":5,\"t\":\"a\",\"w\":\"w\",\"e\":1}")]
    [InlineData("{\"v\":1,\"id\":\"0193a3c4-0000-7000-8000-000000000000\",\"p\":11,\"t\":\"a\",\"w\":\"w\",\"e\":1}")]
    [InlineData("{\"v\":1,\"id\":\"0193a3c4-0000-7000-8000-000000000000\",\"p\":5,\"w\":\"w\",\"e\":1}")]
    [InlineData("{\"v\":1,\"id\":\"0193a3c4-0000-7000-8000-000000000000\",\"p\":5,\"t\":\"a\",\"w\":\"w\",\"e\":1}{}")]
    [InlineData("{\"v\":1,\"id\":\"0193a3c4-0000-7000-8000-000000000000\",\"p\":5,")]
    [InlineData("{\"v\":1,\"s3\":\"\"}")]
    [InlineData("{\"v\":\"1\",\"s3\":\"key\"}")]
    public void Message_Poison_IsRejectedWithAReason(string body)
    {
        Assert.False(SqsMessage.TryDecode(body, out _, out _, out var problem));
        Assert.False(string.IsNullOrEmpty(problem));
    }

    [Fact]
    public void Message_FieldsOfALaterVersion_AreSkipped()
    {
        const string body = "{\"v\":1,\"x\":{\"nested\":[1,2]},\"id\":\"0193a3c4-0000-7000-8000-000000000000\",\"p\":5,\"t\":\"a\",\"w\":\"w\",\"k\":null,\"e\":1,\"y\":\"z\"}";

        Assert.True(SqsMessage.TryDecode(body, out var job, out var pointer, out _));
        Assert.Null(pointer);
        Assert.Equal(("a", "w", 5, (string?)null), (job.Tenant, job.Workload, job.Priority, job.ConcurrencyKey));
    }

    [Fact]
    public void Message_Pointer_RoundTrips()
    {
        Assert.True(SqsMessage.TryDecode(SqsMessage.EncodePointer("payloads/abc"), out _, out var pointer, out var problem));
        Assert.Equal("payloads/abc", pointer);
        Assert.Null(problem);
    }

    [Fact]
    public async Task Client_Throttled_IsRetried()
    {
        var handler = new ScriptedHandler(
            _ => Error(HttpStatusCode.BadRequest, "com.amazonaws.sqs#ThrottlingException", "Rate exceeded"),
            _ => Error(HttpStatusCode.ServiceUnavailable, "ServiceUnavailable", "busy"),
            _ => new HttpResponseMessage(HttpStatusCode.OK) { Content = new StringContent("{\"QueueUrl\":\"u\"}") });
        using var client = Client(handler, maxRetries: 3);

        using var result = await client.SendAsync("GetQueueUrl", "q", static (w, n) => w.WriteString("QueueName", n), CancellationToken.None);

        Assert.Equal("u", result.RootElement.GetProperty("QueueUrl").GetString());
        Assert.Equal(3, handler.Requests.Count);
        Assert.Equal(3, client.Calls);
        Assert.All(handler.Requests, r => Assert.Equal("AmazonSQS.GetQueueUrl", r.Target));
        Assert.All(handler.Requests, r => Assert.StartsWith("AWS4-HMAC-SHA256 Credential=AKID/", r.Authorization, StringComparison.Ordinal));
        Assert.Equal("{\"QueueName\":\"q\"}", handler.Requests[0].Body);
    }

    [Fact]
    public async Task Enqueue_EntryFailedBySqs_IsSentAgain_AndANoFaultOfTheSendersIsNotGivenUpAfterOneTry()
    {
        // SendMessageBatch answers 200 with a failed entry (SQS's own fault), then takes it.
        var handler = new ScriptedHandler(
            _ => new HttpResponseMessage(HttpStatusCode.OK) { Content = new StringContent("{\"QueueUrl\":\"http://127.0.0.1:9/1/jobrunner\"}") },
            _ => new HttpResponseMessage(HttpStatusCode.OK) { Content = new StringContent("{\"Successful\":[],\"Failed\":[{\"Id\":\"0\",\"Code\":\"InternalError\",\"SenderFault\":false,\"Message\":\"try again\"}]}") },
            _ => new HttpResponseMessage(HttpStatusCode.OK) { Content = new StringContent("{\"Successful\":[{\"Id\":\"0\",\"MessageId\":\"m\"}],\"Failed\":[]}") });
        await using var queue = AwsSetup.CreateQueue(
            new SqsQueueOptions { Region = "us-east-1", ServiceUrl = new Uri("http://127.0.0.1:9/"), Credentials = new BasicAWSCredentials("AKID", "secret") },
            TimeProvider.System,
            transport: handler);
        var job = new QueuedJob { Id = JobId.New(TimeProvider.System), Priority = 5, Tenant = "t", Workload = "w", EnqueuedAt = TimeProvider.System.GetUtcNow() };

        await queue.EnqueueAsync(job, CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(["AmazonSQS.GetQueueUrl", "AmazonSQS.SendMessageBatch", "AmazonSQS.SendMessageBatch"], handler.Requests.Select(r => r.Target));
        Assert.Equal(
            System.Text.Json.JsonDocument.Parse(handler.Requests[1].Body).RootElement.GetProperty("Entries")[0].GetProperty("MessageBody").GetString(),
            System.Text.Json.JsonDocument.Parse(handler.Requests[2].Body).RootElement.GetProperty("Entries")[0].GetProperty("MessageBody").GetString());
    }

    [Fact]
    public async Task Client_ServerErrorsPastTheRetries_SurfaceAsTransient()
    {
        var handler = new ScriptedHandler(_ => Error(HttpStatusCode.InternalServerError, "InternalError", "boom"));
        using var client = Client(handler, maxRetries: 2);

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => client.SendAsync("SendMessage", 0, static (_, _) => { }, CancellationToken.None));

        Assert.True(error.IsTransient);
        Assert.Equal("InternalError", error.Code);
        Assert.Equal(3, handler.Requests.Count);
    }

    [Fact]
    public async Task Client_QueueDoesNotExist_IsPermanent_AndNamesTheFix()
    {
        var handler = new ScriptedHandler(_ =>
        {
            var response = Error(HttpStatusCode.BadRequest, "com.amazonaws.sqs#QueueDoesNotExist", "The specified queue does not exist.");
            response.Headers.TryAddWithoutValidation("x-amzn-query-error", "AWS.SimpleQueueService.NonExistentQueue;Sender");
            return response;
        });
        using var client = Client(handler, maxRetries: 3);

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => client.SendAsync("GetQueueUrl", 0, static (_, _) => { }, CancellationToken.None));

        Assert.False(error.IsTransient);
        Assert.Equal("QueueDoesNotExist", error.Code);
        Assert.Single(handler.Requests);
        Assert.Contains("SqsQueueOptions.CreateQueues = true", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Client_BadCredentials_NameTheFix()
    {
        var handler = new ScriptedHandler(_ => Error(HttpStatusCode.Forbidden, "com.amazon.coral.service#UnrecognizedClientException", "The security token included in the request is invalid."));
        using var client = Client(handler, maxRetries: 3);

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => client.SendAsync("GetQueueUrl", 0, static (_, _) => { }, CancellationToken.None));

        Assert.False(error.IsTransient);
        Assert.Contains("Check the AWS credentials", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Coalescer_CallsArrivingDuringASend_GoOutTogether_InBatchesOfTen()
    {
        var gate = new TaskCompletionSource();
        var batches = new List<int[]>();
        var coalescer = new Coalescer<int>(async items =>
        {
            lock (batches)
            {
                batches.Add(items);
            }

            await gate.Task;
            return new Exception?[items.Length];
        }, maxConcurrent: 1);

        var first = coalescer.AddAsync(0);
        var rest = Enumerable.Range(1, 24).Select(coalescer.AddAsync).ToList();
        gate.SetResult();
        await Task.WhenAll(rest.Append(first)).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(25, batches.Sum(b => b.Length));
        Assert.All(batches, b => Assert.InRange(b.Length, 1, 10));
        Assert.True(batches.Count <= 4, $"{batches.Count} batches");
        Assert.Equal(Enumerable.Range(0, 25), batches.SelectMany(b => b).Order());
    }

    [Fact]
    public async Task Coalescer_FailedEntry_FailsOnlyItsCaller()
    {
        var coalescer = new Coalescer<int>(items => Task.FromResult(items.Select(i => i == 2 ? new InvalidOperationException("two") : null).ToArray<Exception?>()), maxConcurrent: 1);

        var ok = coalescer.AddAsync(1);
        var bad = coalescer.AddAsync(2);

        await ok.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal("two", (await Assert.ThrowsAsync<InvalidOperationException>(() => bad.WaitAsync(TimeSpan.FromSeconds(30)))).Message);
    }

    [Fact]
    public void Options_Defaults()
    {
        var options = new SqsQueueOptions();

        Assert.Equal("jobrunner", options.QueueName);
        Assert.Empty(options.Bands);
        Assert.False(options.Fifo);
        Assert.False(options.CreateQueues);
        Assert.Null(options.DeadLetterQueueName);
        Assert.Null(options.MaxReceiveCount);
        Assert.Equal(TimeSpan.FromSeconds(20), options.WaitTime);
        Assert.Equal(3, options.MaxRetries);
        Assert.Null(options.LargePayloadBucket);
        Assert.Equal(256_000, options.LargePayloadThreshold);
        Assert.Null(options.ServiceUrl);
        Assert.Null(options.Credentials);
    }

    [Fact]
    public void FifoHold_NeverReachesPastTwelveHoursFromTheReceive()
    {
        var received = new DateTimeOffset(2026, 11, 22, 10, 0, 0, TimeSpan.Zero);

        // A job due in a day, looked at 3 s after its receive: held for what is left of SQS's 12 hours, less a minute.
        Assert.Equal(TimeSpan.FromHours(12) - TimeSpan.FromSeconds(3) - TimeSpan.FromMinutes(1), SqsJobQueue.FifoHold(TimeSpan.FromDays(1), received, received.AddSeconds(3)));
        Assert.Equal(TimeSpan.FromHours(2), SqsJobQueue.FifoHold(TimeSpan.FromHours(2), received, received.AddSeconds(3)));
        Assert.Equal(TimeSpan.Zero, SqsJobQueue.FifoHold(TimeSpan.FromDays(1), received, received.AddHours(12)));
    }

    [Fact]
    public void Options_Invalid_EveryProblemNamesItsFix()
    {
        var options = new SqsQueueOptions { Region = null, WaitTime = TimeSpan.FromSeconds(30), MaxReceiveCount = 0, LargePayloadThreshold = 300_000 };
        options.Bands.Add(new SqsPriorityBand(5, "mid"));
        options.Bands.Add(new SqsPriorityBand(5, ""));

        var result = new SqsQueueOptionsValidator().Validate(null, options);

        Assert.True(result.Failed);
        Assert.Equal(
        [
            "SqsQueueOptions.Region is not set. Set it (e.g. \"eu-west-1\") or the AWS_REGION environment variable.",
            "SqsQueueOptions.Bands has two bands starting at priority 5. Give each band its own MinPriority.",
            "SqsQueueOptions.Bands: the band from priority 5 has no QueueName. Set the queue's name or URL.",
            "SqsQueueOptions.Bands has no band starting at priority 1. Add one, so every priority has a queue.",
            "SqsQueueOptions.WaitTime is 00:00:30. Set it from 0 to 20 seconds (SQS's long-poll limit).",
            "SqsQueueOptions.MaxReceiveCount is 0. Set it from 1 to 1000.",
            "SqsQueueOptions.LargePayloadThreshold is 300000. Set it from 1 to 262,144 bytes (SQS's message limit).",
        ], result.Failures);
    }

    [Fact]
    public void Options_PayloadStorage_TakesTheQueuesRegionByDefault_EvenWithAwsRegionSet()
    {
        // A new S3StoreOptions reads AWS_REGION; the payload storage's default must not, or it would win over the queue's.
        Assert.Null(new SqsQueueOptions().PayloadStorage.Region);
    }

    [Fact]
    public void Options_PayloadStorageMissing_NamesTheFix_InsteadOfFailingLater()
    {
        var none = new SqsQueueOptions { Region = "us-east-1", PayloadStorage = null! };
        var noPrefix = new SqsQueueOptions { Region = "us-east-1", PayloadStorage = new S3StoreOptions { Prefix = null! } };

        Assert.Equal(["SqsQueueOptions.PayloadStorage is null. Leave the default, or set it to a new S3StoreOptions."], new SqsQueueOptionsValidator().Validate(null, none).Failures);
        Assert.Equal(["SqsQueueOptions.PayloadStorage.Prefix is null. Set it to \"\" for none, or a prefix such as \"jobrunner/\"."], new SqsQueueOptionsValidator().Validate(null, noPrefix).Failures);
    }

    [Fact]
    public void Options_UnknownRegionWithAnEmulator_IsAllowed()
    {
        var options = new SqsQueueOptions { Region = "local", ServiceUrl = new Uri("http://127.0.0.1:1") };

        Assert.True(new SqsQueueOptionsValidator().Validate(null, options).Succeeded);
    }

    [Fact]
    public void S3Options_Invalid_NameTheFix()
    {
        var result = new S3StoreOptionsValidator().Validate("logs", new S3StoreOptions { Region = "us-east-1", Bucket = "Bad_Bucket" });

        Assert.Equal(["S3StoreOptions (logs).Bucket is 'Bad_Bucket', which is not a valid bucket name. Use 3 to 63 lowercase letters, digits, '-' or '.'."], result.Failures);
    }

    private static SqsClient Client(HttpMessageHandler handler, int maxRetries)
        => AwsSetup.CreateSqsClient(
            new SqsQueueOptions { Region = "us-east-1", ServiceUrl = new Uri("http://127.0.0.1:9/"), MaxRetries = maxRetries },
            new BasicAWSCredentials("AKID", "secret"),
            TimeProvider.System,
            handler);

    private static HttpResponseMessage Error(HttpStatusCode status, string type, string message)
        => new(status) { Content = new StringContent($"{{\"__type\":\"{type}\",\"message\":\"{message}\"}}", Encoding.UTF8, "application/x-amz-json-1.0") };

    private sealed class ScriptedHandler(params Func<HttpRequestMessage, HttpResponseMessage>[] responses) : HttpMessageHandler
    {
        public List<(string Target, string Authorization, string Body)> Requests { get; } = [];

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var body = request.Content is null ? "" : await request.Content.ReadAsStringAsync(cancellationToken);
            Requests.Add((request.Headers.GetValues("X-Amz-Target").Single(), request.Headers.GetValues("Authorization").Single(), body));
            return responses[Math.Min(Requests.Count - 1, responses.Length - 1)](request);
        }
    }
}
