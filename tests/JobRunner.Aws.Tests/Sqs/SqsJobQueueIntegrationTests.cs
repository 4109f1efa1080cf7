using JobRunner.Aws.Sqs;
using JobRunner.Aws.Tests.Support;
using static JobRunner.Aws.Tests.Support.AwsTestEnvironment;

namespace JobRunner.Aws.Tests.Sqs;

/// <summary>SqsJobQueue against the real emulators (fauxqs and local-aws-sqs) started by eng/test-services/aws.sh.</summary>
public sealed class SqsJobQueueIntegrationTests
{
    private static readonly TimeSpan Visibility = TimeSpan.FromSeconds(30);

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task Enqueue_Dequeue_ReturnsTheJob_AndAcknowledgeDeletesIt(string emulator)
    {
        await using var queue = AwsSetup.CreateQueue(QueueOptions(emulator), TimeProvider.System);
        using var raw = RawClient(emulator);
        var job = Job(priority: 7, tenant: "globex");

        await queue.EnqueueAsync(job, Guard());
        var buffer = new QueuedJob[10];
        var got = await queue.DequeueAsync(buffer, Visibility, Guard());

        Assert.Equal(1, got);
        Assert.Equal(job with { Receipt = null }, buffer[0] with { Receipt = null, EnqueuedAt = job.EnqueuedAt });
        Assert.Equal(job.EnqueuedAt.ToUnixTimeMilliseconds(), buffer[0].EnqueuedAt.ToUnixTimeMilliseconds());
        Assert.IsType<SqsReceipt>(buffer[0].Receipt);
        Assert.Equal(1, (await CountsAsync(raw, queue.QueueUrls[0]!))["ApproximateNumberOfMessagesNotVisible"]);

        await queue.AcknowledgeAsync([buffer[0]], Guard());

        var counts = await CountsAsync(raw, queue.QueueUrls[0]!);
        Assert.Equal(0, counts["ApproximateNumberOfMessages"]);
        Assert.Equal(0, counts["ApproximateNumberOfMessagesNotVisible"]);
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task Return_MakesTheJobVisibleAgainAtOnce(string emulator)
    {
        await using var queue = AwsSetup.CreateQueue(QueueOptions(emulator), TimeProvider.System);
        var job = Job();
        await queue.EnqueueAsync(job, Guard());
        var buffer = new QueuedJob[1];
        await queue.DequeueAsync(buffer, Visibility, Guard());

        await queue.ReturnAsync([buffer[0]], Guard());
        var again = await queue.DequeueAsync(buffer, Visibility, Guard());

        Assert.Equal(1, again);
        Assert.Equal(job.Id, buffer[0].Id);
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task Extend_KeepsTheJobInvisiblePastItsFirstVisibility(string emulator)
    {
        await using var queue = AwsSetup.CreateQueue(QueueOptions(emulator), TimeProvider.System);
        using var raw = RawClient(emulator);
        await queue.EnqueueAsync(Job(), Guard());
        var buffer = new QueuedJob[1];
        await queue.DequeueAsync(buffer, TimeSpan.FromSeconds(1), Guard());

        await queue.ExtendAsync([buffer[0]], TimeSpan.FromMinutes(10), Guard());

        // Without the extension the message would be visible again after 1 second; a 3-second long poll sees nothing.
        Assert.Empty(await ReceiveRawAsync(raw, queue.QueueUrls[0]!, waitSeconds: 3));
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task LapsedVisibility_DeliversTheJobAgain(string emulator)
    {
        await using var queue = AwsSetup.CreateQueue(QueueOptions(emulator), TimeProvider.System);
        var job = Job();
        await queue.EnqueueAsync(job, Guard());
        var buffer = new QueuedJob[1];
        await queue.DequeueAsync(buffer, TimeSpan.FromSeconds(1), Guard());
        var first = buffer[0];

        // Nothing acknowledges it: the long poll brings it back once its 1-second visibility lapses.
        var again = await queue.DequeueAsync(buffer, Visibility, Guard());

        Assert.Equal(1, again);
        Assert.Equal(job.Id, buffer[0].Id);
        Assert.NotEqual(((SqsReceipt)first.Receipt!).Handle, ((SqsReceipt)buffer[0].Receipt!).Handle);
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task ConcurrentCalls_AreBatched_AtMostThreeCallsPerTenJobs(string emulator)
    {
        await using var queue = AwsSetup.CreateQueue(QueueOptions(emulator), TimeProvider.System);
        await queue.StartAsync(Guard());
        const int Jobs = 50;
        var jobs = Enumerable.Range(0, Jobs).Select(_ => Job()).ToList();
        var before = queue.ApiCalls;

        await Task.WhenAll(jobs.Select(j => queue.EnqueueAsync(j, Guard()).AsTask()));
        var sends = queue.ApiCalls - before;

        var seen = new HashSet<JobId>();
        var buffer = new QueuedJob[10];
        while (seen.Count < Jobs)
        {
            var got = await queue.DequeueAsync(buffer, Visibility, Guard());
            var batch = buffer.Take(got).ToArray();
            foreach (var j in batch)
            {
                seen.Add(j.Id);
            }

            // One acknowledgement per job, all at once, as the worker's slots do.
            await Task.WhenAll(batch.Select(j => queue.AcknowledgeAsync([j], Guard()).AsTask()));
        }

        var total = queue.ApiCalls - before;
        Assert.True(sends <= 10, $"{sends} calls to send {Jobs} jobs.");
        Assert.True(total <= Jobs * 0.5, $"{total} calls for {Jobs} jobs (send, receive, delete).");
        Assert.Equal(jobs.Select(j => j.Id).ToHashSet(), seen);
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task PriorityBands_EachBandHasItsQueue(string emulator)
    {
        var options = QueueOptions(emulator);
        var prefix = Unique("bands");
        options.Bands.Add(new SqsPriorityBand(1, prefix + "-low"));
        options.Bands.Add(new SqsPriorityBand(8, prefix + "-high"));
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(emulator);
        var low = Job(priority: 3);
        var high = Job(priority: 9);

        await queue.EnqueueAsync(low, Guard());
        await queue.EnqueueAsync(high, Guard());

        Assert.EndsWith("-high", queue.QueueUrls[0], StringComparison.Ordinal);
        Assert.Equal(1, (await CountsAsync(raw, queue.QueueUrls[0]!))["ApproximateNumberOfMessages"]);
        Assert.Equal(1, (await CountsAsync(raw, queue.QueueUrls[1]!))["ApproximateNumberOfMessages"]);
        var taken = new List<QueuedJob>();
        var buffer = new QueuedJob[10];
        while (taken.Count < 2)
        {
            var got = await queue.DequeueAsync(buffer, Visibility, Guard());
            taken.AddRange(buffer.Take(got));
        }

        Assert.Equal(new[] { high.Id, low.Id }.Order(), taken.Select(j => j.Id).Order());
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task PoisonMessage_GoesToTheDeadLetterQueue_AndDoesNotBlockTheQueue(string emulator)
    {
        var options = QueueOptions(emulator);
        options.DeadLetterQueueName = options.QueueName + "-dlq";
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(emulator);
        await queue.StartAsync(Guard());
        await SendRawAsync(raw, queue.QueueUrls[0]!, "this is not a job");
        var good = Job();
        await queue.EnqueueAsync(good, Guard());

        var buffer = new QueuedJob[10];
        var got = await queue.DequeueAsync(buffer, Visibility, Guard());
        while (got == 0 || buffer[0].Id != good.Id)
        {
            got = await queue.DequeueAsync(buffer, Visibility, Guard());
        }

        var dead = await ReceiveRawAsync(raw, queue.DeadLetterUrl!);
        Assert.Equal("this is not a job", Assert.Single(dead).GetProperty("Body").GetString());
        await queue.AcknowledgeAsync([buffer[0]], Guard());
        var counts = await CountsAsync(raw, queue.QueueUrls[0]!);
        Assert.Equal(0, counts["ApproximateNumberOfMessages"] + counts["ApproximateNumberOfMessagesNotVisible"]);
    }

    public static TheoryData<string, int?> RedriveCases => new()
    {
        { Fauxqs, null },
        { Fauxqs, 4 },
        { LocalAwsSqs, null },
        { LocalAwsSqs, 4 },
    };

    [Theory]
    [MemberData(nameof(RedriveCases))]
    public async Task CreatedQueue_RedrivesToTheDeadLetterQueue_OnlyWithMaxReceiveCount(string emulator, int? maxReceiveCount)
    {
        // Without MaxReceiveCount there is no redrive: SQS counts every receive (a job handed back, a long FIFO delay),
        // and a redrive would move healthy jobs' only messages away.
        var options = QueueOptions(emulator);
        options.DeadLetterQueueName = options.QueueName + "-dlq";
        options.MaxReceiveCount = maxReceiveCount;
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(emulator);

        await queue.StartAsync(Guard());

        using var attributes = await raw.SendAsync("GetQueueAttributes", queue.QueueUrls[0]!, static (w, u) =>
        {
            w.WriteString("QueueUrl", u);
            w.WriteStartArray("AttributeNames");
            w.WriteStringValue("All");
            w.WriteEndArray();
        }, CancellationToken.None);
        var redrive = attributes.RootElement.TryGetProperty("Attributes", out var all) && all.TryGetProperty("RedrivePolicy", out var r) ? r.GetString() : null;
        if (maxReceiveCount is null)
        {
            Assert.Null(redrive);
            return;
        }

        using var policy = System.Text.Json.JsonDocument.Parse(redrive!);
        Assert.EndsWith(":" + options.DeadLetterQueueName, policy.RootElement.GetProperty("deadLetterTargetArn").GetString(), StringComparison.Ordinal);
        Assert.Equal("4", policy.RootElement.GetProperty("maxReceiveCount").ToString());
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task JobDueAfterFifteenMinutes_IsSentAgainWithTheRestOfTheDelay(string emulator)
    {
        await using var queue = AwsSetup.CreateQueue(QueueOptions(emulator), TimeProvider.System);
        using var raw = RawClient(emulator);
        await queue.StartAsync(Guard());
        // As SQS hands it back after its first 15 minutes: due in 20 minutes more, visible now.
        var job = Job(due: TimeProvider.System.GetUtcNow().AddMinutes(20));
        await SendRawAsync(raw, queue.QueueUrls[0]!, SqsMessage.Encode(job));

        var ready = await queue.PollOnceAsync(Visibility, Guard());

        Assert.Equal(0, ready);
        var counts = await CountsAsync(raw, queue.QueueUrls[0]!);
        Assert.Equal(0, counts["ApproximateNumberOfMessages"]);
        Assert.Equal(0, counts["ApproximateNumberOfMessagesNotVisible"]);
        Assert.Equal(1, counts["ApproximateNumberOfMessagesDelayed"]);
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task MissingQueue_FailsStart_WithAnErrorThatNamesTheFix(string emulator)
    {
        var options = QueueOptions(emulator);
        options.CreateQueues = false;
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => queue.StartAsync(Guard()));

        Assert.Equal("QueueDoesNotExist", error.Code);
        Assert.False(error.IsTransient);
        Assert.Contains($"'{options.QueueName}' does not exist", error.Message, StringComparison.Ordinal);
        Assert.Contains("CreateQueues = true", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Fifo_TenantIsTheMessageGroup_AndOrderHoldsWithinATenant()
    {
        var options = QueueOptions(Fauxqs);
        options.Fifo = true;
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(Fauxqs);
        var a1 = Job(tenant: "a");
        var b1 = Job(tenant: "b");
        var a2 = Job(tenant: "a");

        foreach (var job in new[] { a1, b1, a2 })
        {
            await queue.EnqueueAsync(job, Guard());
        }

        Assert.EndsWith(".fifo", queue.QueueUrls[0], StringComparison.Ordinal);
        // A message in flight holds up the rest of its group, so each one is deleted once seen.
        var messages = new List<System.Text.Json.JsonElement>();
        for (var i = 0; i < 10 && messages.Count < 3; i++)
        {
            foreach (var m in await ReceiveRawAsync(raw, queue.QueueUrls[0]!, waitSeconds: 1))
            {
                messages.Add(m);
                using var _ = await raw.SendAsync("DeleteMessage", (queue.QueueUrls[0]!, m.GetProperty("ReceiptHandle").GetString()!), static (w, s) =>
                {
                    w.WriteString("QueueUrl", s.Item1);
                    w.WriteString("ReceiptHandle", s.Item2);
                }, CancellationToken.None);
            }
        }

        Assert.Equal(3, messages.Count);
        var groups = messages.Select(m => m.GetProperty("Attributes").GetProperty("MessageGroupId").GetString()).Order().ToList();
        Assert.Equal(["a", "a", "b"], groups);
        var tenantA = messages.Where(m => m.GetProperty("Attributes").GetProperty("MessageGroupId").GetString() == "a")
            .Select(m => { SqsMessage.TryDecode(m.GetProperty("Body").GetString()!, out var j, out _, out _); return j.Id; });
        Assert.Equal([a1.Id, a2.Id], tenantA);
    }

    [Fact]
    public async Task LargePayload_IsKeptInS3_AndDeletedWithTheMessage()
    {
        using var bucket = await CreateBucketAsync();
        var options = LargePayloadOptions(bucket.Name);
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(Fauxqs);
        var job = Job();

        await queue.EnqueueAsync(job, Guard());
        var stored = await bucket.ListAsync("payloads/", null, Guard());
        var buffer = new QueuedJob[1];
        await queue.DequeueAsync(buffer, Visibility, Guard());
        await queue.AcknowledgeAsync([buffer[0]], Guard());

        Assert.StartsWith($"payloads/{job.Id}/", Assert.Single(stored), StringComparison.Ordinal);
        Assert.Equal(job.Id, buffer[0].Id);
        Assert.Equal(job.Tenant, buffer[0].Tenant);
        Assert.Empty(await bucket.ListAsync("payloads/", null, Guard()));
    }

    [Fact]
    public async Task MissingPayloadBucket_FailsStart_WithAnErrorThatNamesTheFix()
    {
        var options = LargePayloadOptions("jobrunner-missing-" + Guid.NewGuid().ToString("N")[..12]);
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => queue.StartAsync(Guard()));

        Assert.Equal("NoSuchBucket", error.Code);
        Assert.Contains($"'{options.LargePayloadBucket}' does not exist", error.Message, StringComparison.Ordinal);
        Assert.Contains("CreateBucket = true", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task LargePayload_AcknowledgingAnOlderDeliveryOfTheMessage_KeepsTheBodyTheNewerNeeds()
    {
        using var bucket = await CreateBucketAsync();
        var options = LargePayloadOptions(bucket.Name);
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        await queue.EnqueueAsync(Job(), Guard());

        // Delivered twice (here: given back and received again); the worker keeps the newer delivery and acknowledges
        // the older one, whose receipt handle SQS no longer honours.
        var older = new QueuedJob[1];
        await queue.DequeueAsync(older, Visibility, Guard());
        await queue.ReturnAsync([older[0]], Guard());
        var newer = new QueuedJob[1];
        await queue.DequeueAsync(newer, Visibility, Guard());
        await queue.AcknowledgeAsync([older[0]], Guard());

        Assert.Single(await bucket.ListAsync("payloads/", null, Guard()));
        await queue.AcknowledgeAsync([newer[0]], Guard());
        Assert.Empty(await bucket.ListAsync("payloads/", null, Guard()));
    }

    /// <summary>A queue on fauxqs whose every message body goes to <paramref name="bucket"/> in S3.</summary>
    private static SqsQueueOptions LargePayloadOptions(string bucket)
    {
        var options = QueueOptions(Fauxqs);
        options.LargePayloadBucket = bucket;
        options.LargePayloadThreshold = 1;
        options.PayloadStorage = new S3StoreOptions { ServiceUrl = S3Endpoint, ForcePathStyle = true, Region = "us-east-1" };
        return options;
    }
}
